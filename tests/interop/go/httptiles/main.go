// Command httptiles reads a live Cairn auditor's audit log over HTTPS, through its C2SP
// tlog-tiles endpoints only, with two independent clients:
//
//   - Go's golang.org/x/mod: sumdb/note verifies the checkpoint with the verifier key fetched
//     from /v1/audit/verifier-key (which must equal the registry's key given on the command
//     line), and sumdb/tlog's TileHashReader, over a TileReader written here against HTTP,
//     proves entries' inclusion (ProveRecord, CheckRecord) and the consistency of an earlier
//     checkpoint with the latest (ProveTree, CheckTree);
//   - transparency-dev's tessera client (client.HTTPFetcher, ProofBuilder, LogStateTracker)
//     with transparency-dev/merkle's RFC 9162 proof verification.
//
// Entry bundles are fetched with the auditor's client certificate; every entry's leaf hash
// (RFC 9162 §2.1.1) must equal the level-0 tile hash at its index. Without a certificate, an
// entry bundle must be refused (401 or 403, application/problem+json).
//
// Usage:
//
//	httptiles checkpoint -base URL -ca FILE                       print the signed checkpoint
//	httptiles verify -base URL -ca FILE -vkey VKEY -cert FILE -key FILE -old FILE -entries I,J,...
//
// verify prints "ok <size> <old size> <entries checked>" or fails with a non-zero exit.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const (
	height       = 8 // C2SP tlog-tiles: hash tiles and entry bundles of 2^8
	width        = 1 << height
	maxBody      = 8 << 20
	timeout      = 60 * time.Second
	maxChecked   = 4096 // entries checked, a bound on the loops
	problemsType = "application/problem+json"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "httptiles: "+format+"\n", args...)
	os.Exit(1)
}

// httpsClient trusts only the federation CA; with cert and key it presents that certificate.
func httpsClient(caFile, certFile, keyFile string) *http.Client {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fail("CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("CA: no certificate in %s", caFile)
	}
	config := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			fail("client certificate: %v", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: config}}
}

type response struct {
	status      int
	contentType string
	body        []byte
}

func get(c *http.Client, u string) response {
	r, err := c.Get(u)
	if err != nil {
		fail("GET %s: %v", u, err)
	}
	defer r.Body.Close()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		fail("GET %s: %v", u, err)
	}
	return response{r.StatusCode, strings.Split(r.Header.Get("Content-Type"), ";")[0], body}
}

func getOK(c *http.Client, u string) []byte {
	r := get(c, u)
	if r.status != http.StatusOK {
		fail("GET %s: status %d: %s", u, r.status, r.body)
	}
	return r.body
}

// c2spPath turns x/mod's "tile/H/L/N[.p/W]" (H = 8) into C2SP tlog-tiles "tile/L/N[.p/W]",
// and its data tiles "tile/H/data/N[.p/W]" into entry bundles "tile/entries/N[.p/W]".
func c2spPath(t tlog.Tile) string {
	p := t.Path()
	if t.L == -1 {
		return strings.Replace(p, fmt.Sprintf("tile/%d/data/", t.H), "tile/entries/", 1)
	}
	return strings.Replace(p, fmt.Sprintf("tile/%d/", t.H), "tile/", 1)
}

// httpTiles is a tlog.TileReader over the auditor's public tile endpoints.
type httpTiles struct {
	c    *http.Client
	base string // .../v1/audit/log
	read int
}

func (h *httpTiles) Height() int { return height }

func (h *httpTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		if t.H != height || t.L < 0 {
			return nil, fmt.Errorf("tile %v: not a hash tile of height %d", t, height)
		}
		r := get(h.c, h.base+"/"+c2spPath(t))
		if r.status != http.StatusOK {
			return nil, fmt.Errorf("tile %s: status %d", c2spPath(t), r.status)
		}
		if len(r.body) != t.W*tlog.HashSize {
			return nil, fmt.Errorf("tile %s: %d bytes, not %d", c2spPath(t), len(r.body), t.W*tlog.HashSize)
		}
		out[i] = r.body
		h.read++
	}
	return out, nil
}

func (h *httpTiles) SaveTiles([]tlog.Tile, [][]byte) {}

type checkpoint struct {
	origin string
	tree   tlog.Tree
}

// openCheckpoint verifies a signed checkpoint (C2SP signed-note, tlog-checkpoint) with v.
func openCheckpoint(msg []byte, v note.Verifier) checkpoint {
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		fail("checkpoint signature: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != v.Name() {
		fail("checkpoint: not for origin %s", v.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		fail("checkpoint size %q", lines[1])
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("checkpoint root hash %q", lines[2])
	}
	var root tlog.Hash
	copy(root[:], rootBytes)
	return checkpoint{lines[0], tlog.Tree{N: size, Hash: root}}
}

// parseBundle splits a tlog-tiles entry bundle: each entry a big-endian uint16 length, then bytes.
func parseBundle(data []byte, want int) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 && len(out) <= want {
		if len(data) < 2 {
			return nil, fmt.Errorf("truncated length")
		}
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n {
			return nil, fmt.Errorf("truncated entry")
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	if len(out) != want || len(data) != 0 {
		return nil, fmt.Errorf("%d entries (or trailing bytes), not %d", len(out), want)
	}
	return out, nil
}

func bundleWidth(size, n int64) int {
	if w := size - n*width; w < width {
		return int(w)
	}
	return width
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: httptiles checkpoint|verify -base URL -ca FILE ...")
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	base := flags.String("base", "", "the auditor's URL, https://host:port")
	ca := flags.String("ca", "", "the federation CA certificate (PEM)")
	registryVkey := flags.String("vkey", "", "the checkpoint verifier key, from the registry")
	cert := flags.String("cert", "", "the auditor's client certificate (PEM)")
	key := flags.String("key", "", "its private key (PEM, unencrypted)")
	oldFile := flags.String("old", "", "an earlier signed checkpoint fetched from the auditor")
	entriesFlag := flags.String("entries", "", "entry indices to prove, comma-separated")
	if err := flags.Parse(os.Args[2:]); err != nil {
		fail("%v", err)
	}
	anonymous := httpsClient(*ca, "", "")
	logURL := strings.TrimSuffix(*base, "/") + "/v1/audit/log"
	if os.Args[1] == "checkpoint" {
		os.Stdout.Write(getOK(anonymous, logURL+"/checkpoint"))
		return
	}
	if os.Args[1] != "verify" {
		fail("unknown command %q", os.Args[1])
	}

	// The verifier key, published without a client certificate, is the registry's.
	published := strings.SplitN(string(getOK(anonymous, strings.TrimSuffix(*base, "/")+"/v1/audit/verifier-key")), "\n", 2)[0]
	if published != *registryVkey {
		fail("the published verifier key %q is not the registry's %q", published, *registryVkey)
	}
	verifier, err := note.NewVerifier(published)
	if err != nil {
		fail("verifier key: %v", err)
	}

	// x/mod: the latest checkpoint, then proofs from hash tiles read over HTTP.
	latestRaw := getOK(anonymous, logURL+"/checkpoint")
	latest := openCheckpoint(latestRaw, verifier)
	oldRaw, err := os.ReadFile(*oldFile)
	if err != nil {
		fail("old checkpoint: %v", err)
	}
	old := openCheckpoint(oldRaw, verifier)
	if old.tree.N > latest.tree.N {
		fail("the earlier checkpoint (%d) is larger than the latest (%d)", old.tree.N, latest.tree.N)
	}
	tiles := &httpTiles{c: anonymous, base: logURL}
	hashes := tlog.TileHashReader(latest.tree, tiles)
	treeProof, err := tlog.ProveTree(latest.tree.N, old.tree.N, hashes)
	if err != nil {
		fail("x/mod consistency proof %d -> %d: %v", old.tree.N, latest.tree.N, err)
	}
	if err := tlog.CheckTree(treeProof, latest.tree.N, latest.tree.Hash, old.tree.N, old.tree.Hash); err != nil {
		fail("x/mod consistency %d -> %d: %v", old.tree.N, latest.tree.N, err)
	}

	var indices []int64
	for _, s := range strings.Split(*entriesFlag, ",") {
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil || i < 0 || i >= latest.tree.N || len(indices) >= maxChecked {
			fail("entry index %q: not in a tree of %d", s, latest.tree.N)
		}
		indices = append(indices, i)
	}

	// Entry bundles: refused without the auditor's certificate, read with it.
	first := tlog.Tile{H: height, L: -1, N: 0, W: bundleWidth(latest.tree.N, 0)}
	if r := get(anonymous, logURL+"/"+c2spPath(first)); (r.status != 401 && r.status != 403) || r.contentType != problemsType {
		fail("an entry bundle without a client certificate: status %d, %s", r.status, r.contentType)
	}
	auditor := httpsClient(*ca, *cert, *key)
	bundles := map[int64][][]byte{}
	entry := func(i int64) []byte {
		n := i / width
		if _, ok := bundles[n]; !ok {
			t := tlog.Tile{H: height, L: -1, N: n, W: bundleWidth(latest.tree.N, n)}
			entries, err := parseBundle(getOK(auditor, logURL+"/"+c2spPath(t)), t.W)
			if err != nil {
				fail("bundle %s: %v", c2spPath(t), err)
			}
			bundles[n] = entries
		}
		return bundles[n][i%width]
	}
	for _, i := range indices {
		leaf := tlog.RecordHash(entry(i))
		p, err := tlog.ProveRecord(latest.tree.N, i, hashes)
		if err != nil {
			fail("x/mod inclusion proof of %d: %v", i, err)
		}
		if err := tlog.CheckRecord(p, latest.tree.N, latest.tree.Hash, i, leaf); err != nil {
			fail("x/mod inclusion of %d: %v", i, err)
		}
		stored, err := hashes.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
		if err != nil || stored[0] != leaf {
			fail("entry %d: its leaf hash is not the tile's (%v)", i, err)
		}
	}

	// tessera: the same log read by transparency-dev's tiles client.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	root, err := url.Parse(logURL + "/")
	if err != nil {
		fail("%v", err)
	}
	public, err := client.NewHTTPFetcher(root, anonymous)
	if err != nil {
		fail("tessera fetcher: %v", err)
	}
	private, err := client.NewHTTPFetcher(root, auditor)
	if err != nil {
		fail("tessera fetcher: %v", err)
	}
	cp, _, _, err := client.FetchCheckpoint(ctx, public.ReadCheckpoint, verifier, latest.origin)
	if err != nil {
		fail("tessera checkpoint: %v", err)
	}
	if int64(cp.Size) != latest.tree.N || !bytes.Equal(cp.Hash, latest.tree.Hash[:]) {
		fail("tessera read another checkpoint: %d", cp.Size)
	}
	tracker, err := client.NewLogStateTracker(ctx, public.ReadTile, oldRaw, verifier, latest.origin, client.UnilateralConsensus(public.ReadCheckpoint))
	if err != nil {
		fail("tessera log state: %v", err)
	}
	if _, _, _, err := tracker.Update(ctx); err != nil {
		fail("tessera consistency %d -> %d: %v", old.tree.N, latest.tree.N, err)
	}
	if tracker.Latest().Size != cp.Size {
		fail("tessera tracker at %d, not %d", tracker.Latest().Size, cp.Size)
	}
	builder, err := client.NewProofBuilder(ctx, cp.Size, public.ReadTile)
	if err != nil {
		fail("tessera proof builder: %v", err)
	}
	if old.tree.N > 0 {
		cons, err := builder.ConsistencyProof(ctx, uint64(old.tree.N), cp.Size)
		if err != nil {
			fail("tessera consistency proof: %v", err)
		}
		if err := proof.VerifyConsistency(rfc6962.DefaultHasher, uint64(old.tree.N), cp.Size, cons, old.tree.Hash[:], cp.Hash); err != nil {
			fail("tessera consistency %d -> %d: %v", old.tree.N, cp.Size, err)
		}
	}
	for _, i := range indices {
		bundle, err := client.GetEntryBundle(ctx, private.ReadEntryBundle, uint64(i)/width, cp.Size)
		if err != nil {
			fail("tessera entry bundle of %d: %v", i, err)
		}
		leaf := rfc6962.DefaultHasher.HashLeaf(bundle.Entries[uint64(i)%width])
		tileLeaf, err := client.FetchLeafHashes(ctx, public.ReadTile, uint64(i), 1, cp.Size)
		if err != nil || !bytes.Equal(tileLeaf[0], leaf) {
			fail("tessera: entry %d's leaf hash is not the tile's (%v)", i, err)
		}
		incl, err := builder.InclusionProof(ctx, uint64(i))
		if err != nil {
			fail("tessera inclusion proof of %d: %v", i, err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, uint64(i), cp.Size, leaf, incl, cp.Hash); err != nil {
			fail("tessera inclusion of %d: %v", i, err)
		}
	}
	fmt.Printf("ok %d %d %d\n", latest.tree.N, old.tree.N, len(indices))
}
