package mmc

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/store"
)

// BenchmarkStoreWrite: what running the MMC as a one-member raft cluster
// costs. "raft" writes a join token through a started MMC's store (raft
// log, then the FSM's store transaction); "direct" writes the same into a
// store of its own with no applier (one transaction), in the same run.
// "start" is New on a fresh data directory until it serves (the election
// of a member alone included). "raft-concurrent" is 32 writers at once,
// as an enrolment burst makes them: raft commits their entries together
// and the state machine applies each commit's entries in one transaction.
//
//	go test -run '^$' -bench BenchmarkStoreWrite -benchtime 200x ./internal/mmc
func BenchmarkStoreWrite(b *testing.B) {
	write := func(b *testing.B, st *store.Store) {
		for i := 0; b.Loop(); i++ {
			if err := st.PutToken(store.Token{ID: fmt.Sprintf("t%d", i), Expires: time.Now().Add(time.Hour), UsesLeft: 1}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("direct", func(b *testing.B) {
		st, err := store.Open(filepath.Join(b.TempDir(), "mmc.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		write(b, st)
	})
	b.Run("raft-concurrent", func(b *testing.B) {
		s, err := New(Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Admin: "-"})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = s.Run(ctx) }()
		defer func() { cancel(); <-done }()
		var n atomic.Int64
		b.SetParallelism(16) // × GOMAXPROCS writers
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.st.PutToken(store.Token{ID: fmt.Sprintf("t%d", n.Add(1)), Expires: time.Now().Add(time.Hour), UsesLeft: 1}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("raft", func(b *testing.B) {
		start := time.Now()
		s, err := New(Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Admin: "-"})
		if err != nil {
			b.Fatal(err)
		}
		startup := time.Since(start)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = s.Run(ctx) }()
		defer func() { cancel(); <-done }()
		write(b, s.st)
		b.ReportMetric(float64(startup.Milliseconds()), "start-ms")
	})
}
