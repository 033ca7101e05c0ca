//go:build tools

// Package tools pins transparency-dev's witness (cmd/omniwitness, a C2SP tlog-witness) for the
// interop test tests/interop/test_omniwitness.py, which builds it from this module and runs it
// on loopback against the auditor's checkpoints. Nothing here is compiled into Cairn.
package tools

import _ "github.com/transparency-dev/witness/cmd/omniwitness"
