package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/board"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/mmc"
)

// TestIntroduction: the MMC introduces two agents for a job; they open a
// direct SUDP connection with the one-time ticket, both record it on the
// job's blackboard topic, and the MMC relays each side's entry to the
// other. An agent that was not introduced cannot connect to either.
func TestIntroduction(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	srv, err := mmc.New(mmc.Config{DataDir: filepath.Join(dir, "mmc"), Listen: "127.0.0.1:0", Admin: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	mctx, stopMMC := context.WithCancel(ctx)
	mdone := make(chan struct{})
	go func() { defer close(mdone); _ = srv.Run(mctx) }()
	defer func() { stopMMC(); <-mdone }()
	cl := &api.Client{Base: srv.AdminURL(), Token: srv.AdminToken()}
	tok, err := cl.CreateToken(ctx, time.Hour, 3)
	if err != nil {
		t.Fatal(err)
	}

	var agents []*agent.Agent
	for i := range 3 {
		name := fmt.Sprintf("h%d", i)
		a, err := agent.New(agent.Config{DataDir: filepath.Join(dir, name), Bundle: srv.Bundle(), Token: tok.Token, Name: name, Site: "s",
			Listen: "127.0.0.1:0", ReportInterval: time.Second,
			Facts: identity.Overrides{Hostname: name, DiskID: "disk-" + name, MachineID: "m-" + name, MACs: []string{fmt.Sprintf("02:00:00:00:00:%02x", i)}}})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(ctx) }()
		defer func() { <-done }()
	}
	defer cancel()
	for deadline := time.Now().Add(20 * time.Second); ; {
		hs, err := cl.Hosts(ctx)
		n := 0
		for _, h := range hs {
			if h.Online {
				n++
			}
		}
		if err == nil && n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents online: %d (%v)", n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	src, dst, stranger := agents[0], agents[1], agents[2]
	if err := srv.Introduce(ctx, "migration/t1", dst.ID(), src.ID()); err != nil {
		t.Fatal(err)
	}
	// Both sides post peer.connected; each sees the other's via the MMC.
	var entries []board.Entry
	for deadline := time.Now().Add(10 * time.Second); len(entries) < 3; time.Sleep(20 * time.Millisecond) {
		if entries, err = srv.BoardEntries("migration/t1", 0); err != nil || time.Now().After(deadline) {
			t.Fatalf("board entries %v, %v", entries, err)
		}
	}
	from := map[string]board.PeerConnected{}
	if entries[0].From != board.MMC || entries[0].Kind != board.KindNote {
		t.Fatalf("first entry %+v, want the MMC's introduction note", entries[0])
	}
	for _, e := range entries[1:] {
		v, err := board.Decode(e.Kind, e.Body)
		pc, ok := v.(board.PeerConnected)
		if err != nil || !ok {
			t.Fatalf("entry %+v: %v", e, err)
		}
		from[e.From] = pc
	}
	if from[src.ID()].Peer != dst.ID() || from[dst.ID()].Peer != src.ID() {
		t.Fatalf("peer.connected entries: %+v", from)
	}
	relayed := func(a *agent.Agent, author string) bool {
		for _, e := range a.Board("migration/t1") {
			if e.From == author && e.Kind == board.KindPeerConnected {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); !relayed(src, dst.ID()) || !relayed(dst, src.ID()); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("entries not relayed to the other member")
		}
	}
	if len(stranger.Board("migration/t1")) != 0 {
		t.Fatal("an agent outside the topic received its entries")
	}
	// The admin API shows the topic with decoded bodies.
	got, err := cl.Board(ctx, "migration/t1", 0)
	if err != nil || len(got) != 3 || got[1].Kind != board.KindPeerConnected {
		t.Fatalf("admin board view: %+v, %v", got, err)
	}

	// The stranger knows the destination's address and key (both are no
	// secret) but holds no ticket: its handshake is refused.
	ep := agent.DialForTest(stranger)
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	if c, err := ep(dctx, dst); err == nil {
		c.Close()
		t.Fatal("an agent that was not introduced connected to another agent")
	}
}
