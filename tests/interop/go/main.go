// Command tilesclient reads a Cairn audit log laid out as C2SP tlog-tiles in a directory and
// checks it with Go's golang.org/x/mod: the checkpoint with sumdb/note and the published
// verifier key, then every entry's inclusion with sumdb/tlog, from the tiles and bundles alone.
//
// Usage: tilesclient DIR VKEY. Prints "ok <size>" or fails with a non-zero exit.
package main

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return 8 }

// c2spPath turns x/mod's "tile/H/L/N[.p/W]" into C2SP tlog-tiles "tile/L/N[.p/W]".
func c2spPath(t tlog.Tile) string {
	return strings.Replace(t.Path(), fmt.Sprintf("tile/%d/", t.H), "tile/", 1)
}

func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := os.ReadFile(filepath.Join(d.dir, c2spPath(t)))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (d dirTiles) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: tilesclient DIR VKEY")
	}
	dir, vkey := os.Args[1], os.Args[2]
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	msg, err := os.ReadFile(filepath.Join(dir, "checkpoint"))
	if err != nil {
		fail("checkpoint: %v", err)
	}
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		fail("checkpoint signature: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != verifier.Name() {
		fail("checkpoint: not for origin %s", verifier.Name())
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		fail("checkpoint root hash")
	}
	var root tlog.Hash
	copy(root[:], rootBytes)
	tree := tlog.Tree{N: size, Hash: root}
	hashes := tlog.TileHashReader(tree, dirTiles{dir})
	for start := int64(0); start < size; start += 256 {
		width := size - start
		if width > 256 {
			width = 256
		}
		bundle := tlog.Tile{H: 8, L: -1, N: start / 256, W: int(width)}
		path := strings.Replace(bundle.Path(), "tile/8/data/", "tile/entries/", 1)
		data, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			fail("bundle: %v", err)
		}
		for i := start; i < start+width; i++ {
			if len(data) < 2 {
				fail("bundle %s: truncated", path)
			}
			length := int(binary.BigEndian.Uint16(data))
			if len(data) < 2+length {
				fail("bundle %s: truncated", path)
			}
			entry := data[2 : 2+length]
			data = data[2+length:]
			proof, err := tlog.ProveRecord(size, i, hashes)
			if err != nil {
				fail("entry %d: %v", i, err)
			}
			if err := tlog.CheckRecord(proof, size, root, i, tlog.RecordHash(entry)); err != nil {
				fail("entry %d: %v", i, err)
			}
		}
		if len(data) != 0 {
			fail("bundle %s: trailing bytes", path)
		}
	}
	fmt.Printf("ok %d\n", size)
}
