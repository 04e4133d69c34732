package handshake

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the committed fuzz seed corpus")

// fuzzSeed fixes every key and every random draw of the fuzz worlds, so the
// valid messages below are the same bytes on every run and every machine
// (math/rand/v2's ChaCha8 output is specified).
const fuzzSeed = 200

// world holds valid messages of one deterministic exchange:
//
//	plain:    initiator's first initiation (no mac2)
//	cookie:   the RequireCookie responder's cookie reply to plain
//	withMAC2: the initiator's second initiation, carrying that cookie
//	response: a fresh default responder's response to plain
type world struct {
	f                                 *fixture
	plain, cookie, withMAC2, response []byte
}

func newWorld(t testing.TB) *world {
	w := &world{f: newFixture(t, fuzzSeed)}
	i := w.f.initiator(t)
	w.plain = mustInitiation(t, i, t0, 1)
	var err error
	w.cookie, _, err = w.strictResponder(t).HandleInitiation(t0, srcA, w.plain, 2)
	if !errors.Is(err, ErrCookieRequired) {
		t.Fatalf("world: %v", err)
	}
	if err := i.HandleCookieReply(t0, w.cookie); err != nil {
		t.Fatalf("world: %v", err)
	}
	w.withMAC2 = mustInitiation(t, i, t0, 1)
	w.response, _, err = w.f.responder(t).HandleInitiation(t0, srcA, w.plain, 2)
	if err != nil {
		t.Fatalf("world: %v", err)
	}
	return w
}

func (w *world) strictResponder(t testing.TB) *Responder {
	return w.f.responder(t, func(c *ResponderConfig) { c.RequireCookie = true })
}

// pendingInitiator is an initiator in the state that sent w.plain: the same
// seeded randomness makes it send the very same bytes.
func (w *world) pendingInitiator(t testing.TB) *Initiator {
	i := w.f.initiator(t)
	if pkt := mustInitiation(t, i, t0, 1); !bytes.Equal(pkt, w.plain) {
		t.Fatal("initiation is not deterministic")
	}
	return i
}

type seedFile struct {
	name string
	data []byte
}

func (w *world) corpus() map[string][]seedFile {
	trunc := func(b []byte) []byte { return b[:len(b)-1] }
	return map[string][]seedFile{
		"FuzzHandleInitiation": {
			{"valid", w.plain},
			{"valid-mac2", w.withMAC2},
			{"truncated", trunc(w.plain)},
			{"response", w.response},
		},
		"FuzzHandleResponse": {
			{"valid", w.response},
			{"truncated", trunc(w.response)},
			{"initiation", w.plain},
		},
		"FuzzHandleCookieReply": {
			{"valid", w.cookie},
			{"truncated", trunc(w.cookie)},
		},
	}
}

func corpusFile(data []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", data)
}

// TestFuzzCorpusUpToDate keeps testdata/fuzz in step with the code: the
// committed seeds must be exactly the valid messages the current code makes.
// Regenerate with: go test -run TestFuzzCorpusUpToDate -update-corpus
func TestFuzzCorpusUpToDate(t *testing.T) {
	w := newWorld(t)
	for target, files := range w.corpus() {
		for _, sf := range files {
			path := filepath.Join("testdata", "fuzz", target, "seed-"+sf.name)
			want := corpusFile(sf.data)
			if *updateCorpus {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (regenerate with -update-corpus)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s is stale (regenerate with -update-corpus)", path)
			}
		}
	}
}

func addSeeds(f *testing.F, w *world, target string) {
	for _, sf := range w.corpus()[target] {
		f.Add(sf.data)
	}
	f.Add([]byte{})
}

// FuzzHandleInitiation: the responder never panics, always respects the
// amplification bound, and completes a handshake only for the valid
// initiations of the world (whose mac2 the default responder ignores when it
// is zero, so only the bytes it covers must match).
func FuzzHandleInitiation(f *testing.F) {
	w := newWorld(f)
	addSeeds(f, w, "FuzzHandleInitiation")
	f.Fuzz(func(t *testing.T, data []byte) {
		r := w.f.responder(t)
		_, s, err := handle(t, r, t0, srcA, data, 2)
		if s != nil || err == nil {
			valid := len(data) == InitiationSize &&
				(bytes.Equal(data[:initMAC2Offset], w.plain[:initMAC2Offset]) ||
					bytes.Equal(data[:initMAC2Offset], w.withMAC2[:initMAC2Offset]))
			if !valid {
				t.Fatalf("session for a non-valid initiation %x", data)
			}
		}
		if (bytes.Equal(data, w.plain) || bytes.Equal(data, w.withMAC2)) && err != nil {
			t.Fatalf("valid initiation refused: %v", err)
		}
		strict := w.strictResponder(t)
		_, s, err = handle(t, strict, t0, srcA, data, 2)
		if s != nil && !bytes.Equal(data, w.withMAC2) {
			t.Fatalf("strict responder: session for %x", data)
		}
		if bytes.Equal(data, w.withMAC2) && err != nil {
			t.Fatalf("strict responder refused the valid initiation: %v", err)
		}
	})
}

// FuzzHandleResponse: an initiator with the world's initiation in flight
// completes only with the exact valid response.
func FuzzHandleResponse(f *testing.F) {
	w := newWorld(f)
	addSeeds(f, w, "FuzzHandleResponse")
	f.Fuzz(func(t *testing.T, data []byte) {
		i := w.pendingInitiator(t)
		s, err := i.HandleResponse(t0, data)
		if (s != nil) != (err == nil) {
			t.Fatalf("session %v with error %v", s, err)
		}
		if s != nil && !bytes.Equal(data, w.response) {
			t.Fatalf("session for a non-valid response %x", data)
		}
		if bytes.Equal(data, w.response) && err != nil {
			t.Fatalf("valid response refused: %v", err)
		}
		if s == nil {
			// Whatever it was, the genuine response still works.
			if _, err := i.HandleResponse(t0, w.response); err != nil {
				t.Fatalf("genuine response refused after %x: %v", data, err)
			}
		}
	})
}

// FuzzHandleCookieReply: only the exact cookie reply is taken.
func FuzzHandleCookieReply(f *testing.F) {
	w := newWorld(f)
	addSeeds(f, w, "FuzzHandleCookieReply")
	f.Fuzz(func(t *testing.T, data []byte) {
		i := w.pendingInitiator(t)
		err := i.HandleCookieReply(t0, data)
		if err == nil && !bytes.Equal(data, w.cookie) {
			t.Fatalf("cookie reply accepted: %x", data)
		}
		if bytes.Equal(data, w.cookie) && err != nil {
			t.Fatalf("valid cookie reply refused: %v", err)
		}
		if err == nil {
			if pkt := mustInitiation(t, i, t0, 1); isZero(pkt[initMAC2Offset:]) {
				t.Fatal("accepted cookie not used")
			}
		}
	})
}
