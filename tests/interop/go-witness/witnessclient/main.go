// Command witnessclient drives a C2SP tlog-witness (Cairn's `cairn witness serve`) with
// transparency-dev's own witness client (github.com/transparency-dev/witness/client/http),
// and checks each cosignature with transparency-dev/formats' NewVerifierForCosignatureV1:
//
//  1. CP1 from old size 0: cosigned;
//  2. CP2 from old size 0 again: the witness's 409 text/x.tlog.size, read by the client as
//     ErrCheckpointStale with the size it holds (CP1's);
//  3. CP2 from CP1's size with the consistency proof: cosigned;
//  4. FORK (another root for CP2's size) from CP2's size: ErrRootMismatch (409, not a size);
//  5. CP3 from CP2's size with a proof that does not verify: ErrInvalidProof (422).
//
// Usage: witnessclient -url URL -ca FILE -vkey WITNESS_VKEY -cp1 F -cp2 F -proof F -fork F -cp3 F
// (proof: the RFC 9162 consistency proof from CP1 to CP2, one base64 hash a line).
// Prints "ok" or fails with a non-zero exit.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	cosignote "github.com/transparency-dev/formats/note"
	witnesshttp "github.com/transparency-dev/witness/client/http"
	"github.com/transparency-dev/witness/witness"
	"golang.org/x/mod/sumdb/note"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "witnessclient: "+format+"\n", args...)
	os.Exit(1)
}

func read(path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	return data
}

func size(cp []byte) uint64 {
	lines := strings.SplitN(string(cp), "\n", 3)
	n, err := strconv.ParseUint(lines[1], 10, 64)
	if len(lines) < 3 || err != nil {
		fail("not a checkpoint")
	}
	return n
}

// checkCosigned: the witness's answer is signature lines; with the checkpoint they must open
// with the witness's cosignature/v1 verifier, exactly one cosignature by it.
func checkCosigned(step string, cp, sigs []byte, v note.Verifier) {
	if len(sigs) == 0 || !bytes.HasPrefix(sigs, []byte("\u2014 ")) || !bytes.HasSuffix(sigs, []byte("\n")) {
		fail("%s: the answer is not signature lines: %q", step, sigs)
	}
	n, err := note.Open(append(append([]byte{}, cp...), sigs...), note.VerifierList(v))
	if err != nil {
		fail("%s: the cosignature does not verify (transparency-dev/formats): %v", step, err)
	}
	if len(n.Sigs) != 1 {
		fail("%s: %d cosignatures by the witness", step, len(n.Sigs))
	}
	if _, err := cosignote.CoSigV1Timestamp(n.Sigs[0]); err != nil {
		fail("%s: %v", step, err)
	}
}

func main() {
	base := flag.String("url", "", "the witness's submission prefix URL")
	ca := flag.String("ca", "", "the CA of the witness's TLS certificate (PEM)")
	vkey := flag.String("vkey", "", "the witness's verifier key (cosignature/v1)")
	cp1File := flag.String("cp1", "", "first checkpoint")
	cp2File := flag.String("cp2", "", "second checkpoint")
	proofFile := flag.String("proof", "", "consistency proof from cp1 to cp2")
	forkFile := flag.String("fork", "", "a checkpoint of cp2's size with another root")
	cp3File := flag.String("cp3", "", "a larger checkpoint, submitted with a bad proof")
	flag.Parse()

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(read(*ca)) {
		fail("no CA certificate")
	}
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	u, err := url.Parse(*base)
	if err != nil {
		fail("%v", err)
	}
	w := witnesshttp.NewWitness(u, client)
	v, err := cosignote.NewVerifierForCosignatureV1(*vkey)
	if err != nil {
		fail("witness vkey: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cp1, cp2, fork, cp3 := read(*cp1File), read(*cp2File), read(*forkFile), read(*cp3File)
	var proof [][]byte
	for _, line := range strings.Fields(string(read(*proofFile))) {
		h, err := base64.StdEncoding.DecodeString(line)
		if err != nil {
			fail("proof: %v", err)
		}
		proof = append(proof, h)
	}

	sigs, _, err := w.Update(ctx, 0, cp1, nil)
	if err != nil {
		fail("1 (cp1 from 0): %v", err)
	}
	checkCosigned("1 (cp1 from 0)", cp1, sigs, v)

	_, held, err := w.Update(ctx, 0, cp2, nil)
	if !errors.Is(err, witness.ErrCheckpointStale) || held != size(cp1) {
		fail("2 (cp2 from a stale 0): want ErrCheckpointStale and size %d, got %v and %d", size(cp1), err, held)
	}

	sigs, _, err = w.Update(ctx, size(cp1), cp2, proof)
	if err != nil {
		fail("3 (cp2 from cp1): %v", err)
	}
	checkCosigned("3 (cp2 from cp1)", cp2, sigs, v)

	if _, _, err := w.Update(ctx, size(cp2), fork, nil); !errors.Is(err, witness.ErrRootMismatch) {
		fail("4 (a fork of cp2's size): want ErrRootMismatch, got %v", err)
	}

	bad := [][]byte{make([]byte, 32)}
	if _, _, err := w.Update(ctx, size(cp2), cp3, bad); !errors.Is(err, witness.ErrInvalidProof) {
		fail("5 (cp3 with a bad proof): want ErrInvalidProof, got %v", err)
	}
	fmt.Println("ok")
}
