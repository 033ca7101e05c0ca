// Command cosig checks a cosigned checkpoint (C2SP tlog-checkpoint with C2SP tlog-cosignature
// cosignature/v1 lines) with code that shares none with Cairn's:
//
//   - golang.org/x/mod/sumdb/note opens the note with the log's verifier key alone, the
//     cosignature lines present (signed-note: signatures by unknown keys are ignored);
//   - github.com/transparency-dev/formats/note's NewVerifierForCosignatureV1 verifies each
//     witness's cosignature, given its verifier key as Cairn prints it (type 0x04), and
//     CoSigV1Timestamp reads the time it states;
//   - all the keys at once must verify every signature line in the note.
//
// Usage:
//
//	cosig verify NOTE_FILE LOG_VKEY WITNESS_VKEY...  prints "ok <n>" and "cosignature <name> <time>" lines
//	cosig vkey ED25519_VKEY                         prints formats' cosignature/v1 form of the key
//
// Any failure exits non-zero with the reason on stderr.
package main

import (
	"fmt"
	"os"

	cosignote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cosig: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "vkey" {
		v, err := cosignote.VKeyToCosignatureV1(os.Args[2])
		if err != nil {
			fail("vkey: %v", err)
		}
		fmt.Println(v)
		return
	}
	if len(os.Args) < 5 || os.Args[1] != "verify" {
		fail("usage: cosig verify NOTE_FILE LOG_VKEY WITNESS_VKEY... | cosig vkey ED25519_VKEY")
	}
	msg, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("note: %v", err)
	}
	logV, err := note.NewVerifier(os.Args[3])
	if err != nil {
		fail("log verifier key: %v", err)
	}

	// The log's signature, with x/mod alone: the cosignatures are signatures by unknown keys.
	n, err := note.Open(msg, note.VerifierList(logV))
	if err != nil {
		fail("log signature (x/mod sumdb/note): %v", err)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != logV.Name() || n.Sigs[0].Hash != logV.KeyHash() {
		fail("log signature: %d verified signatures", len(n.Sigs))
	}
	witnesses := os.Args[4:]
	if len(n.UnverifiedSigs) < len(witnesses) {
		fail("%d unverified signature lines, fewer than the %d witnesses", len(n.UnverifiedSigs), len(witnesses))
	}

	// Each witness's cosignature, with transparency-dev/formats.
	all := []note.Verifier{logV}
	var lines []string
	for _, vkey := range witnesses {
		v, err := cosignote.NewVerifierForCosignatureV1(vkey)
		if err != nil {
			fail("witness verifier key %q: %v", vkey, err)
		}
		all = append(all, v)
		w, err := note.Open(msg, note.VerifierList(v))
		if err != nil {
			fail("cosignature by %s (transparency-dev/formats cosignature/v1): %v", v.Name(), err)
		}
		if len(w.Sigs) != 1 || w.Sigs[0].Name != v.Name() || w.Sigs[0].Hash != v.KeyHash() {
			fail("cosignature by %s: %d verified signatures", v.Name(), len(w.Sigs))
		}
		if w.Text != n.Text {
			fail("cosignature by %s: another text", v.Name())
		}
		t, err := cosignote.CoSigV1Timestamp(w.Sigs[0])
		if err != nil {
			fail("cosignature by %s: timestamp: %v", v.Name(), err)
		}
		lines = append(lines, fmt.Sprintf("cosignature %s %d", v.Name(), t.Unix()))
	}

	// Every key at once: each signature line is the log's or a witness's, and verifies.
	every, err := note.Open(msg, note.VerifierList(all...))
	if err != nil {
		fail("all signatures: %v", err)
	}
	if len(every.Sigs) != len(all) || len(every.UnverifiedSigs) != 0 {
		fail("all signatures: %d verified, %d unverified, for %d keys", len(every.Sigs), len(every.UnverifiedSigs), len(all))
	}
	fmt.Printf("ok %d\n", len(witnesses))
	for _, l := range lines {
		fmt.Println(l)
	}
}
