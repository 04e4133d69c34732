package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ferry-vm/ferry/internal/agent"
	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/identity"
	"github.com/ferry-vm/ferry/internal/migration"
	"github.com/ferry-vm/ferry/internal/mmc"
)

// harness is an in-process MMC and two agents (h1 in site east, h2 in
// site west) on loopback SUDP, each agent with a model hypervisor whose
// VMs outlive the agent (as VM processes do).
type harness struct {
	t       *testing.T
	ctx     context.Context
	dir     string
	w       *world
	drivers map[string]*fakeDriver
	token   string

	mu      sync.Mutex
	srv     *mmc.Server
	stopMMC func()
	mmcAddr string
	cl      *api.Client
	agents  map[string]func() // name → stop
	live    map[string]*agent.Agent
}

func newHarness(t *testing.T) *harness {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := newWorld()
	h := &harness{t: t, ctx: ctx, dir: t.TempDir(), w: w, agents: map[string]func(){}, live: map[string]*agent.Agent{},
		drivers: map[string]*fakeDriver{"h1": newFakeDriver(w), "h2": newFakeDriver(w)}}
	h.startMMC()
	t.Cleanup(func() {
		for name := range h.agents {
			h.stopAgent(name)
		}
		h.stopMMCNow()
		for _, d := range h.drivers {
			for _, g := range []string{gatePrepare, gateEnd, gateResume, gateSwitch, gateVerify} {
				d.release(g)
			}
			d.wg.Wait()
		}
	})
	tok, err := h.cl.CreateToken(ctx, time.Hour, 2)
	if err != nil {
		t.Fatal(err)
	}
	h.token = tok.Token
	h.startAgent("h1")
	h.startAgent("h2")
	h.waitOnline("h1", "h2")
	return h
}

func (h *harness) startMMC() {
	listen := h.mmcAddr
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	srv, err := mmc.New(mmc.Config{DataDir: filepath.Join(h.dir, "mmc"), Listen: listen, Admin: "127.0.0.1:0"})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, stop := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	h.mu.Lock()
	h.srv, h.mmcAddr = srv, srv.Addr().String()
	h.stopMMC = func() { stop(); <-done }
	h.cl = &api.Client{Base: srv.AdminURL(), Token: srv.AdminToken(), HTTP: &http.Client{Timeout: 40 * time.Second}}
	h.mu.Unlock()
}

func (h *harness) stopMMCNow() {
	h.mu.Lock()
	stop := h.stopMMC
	h.stopMMC = nil
	h.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (h *harness) client() *api.Client {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cl
}

func (h *harness) startAgent(name string) {
	h.mu.Lock()
	bundle := h.srv.Bundle()
	h.mu.Unlock()
	i := len(name)
	a, err := agent.New(agent.Config{DataDir: filepath.Join(h.dir, name), Bundle: bundle, Token: h.token, Name: name,
		Site: map[string]string{"h1": "east", "h2": "west"}[name], Listen: "127.0.0.1:0", ReportInterval: 200 * time.Millisecond,
		Driver: h.drivers[name], Facts: identity.Overrides{Hostname: name, DiskID: "disk-" + name, MachineID: "m-" + name,
			MACs: []string{fmt.Sprintf("02:00:00:00:%02x:%02x", i, name[len(name)-1])}}})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, stop := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx) }()
	h.agents[name] = func() { stop(); <-done }
	h.live[name] = a
}

// stopAgent ends an agent as a crash would: its sessions and links go
// away; its VMs stay.
func (h *harness) stopAgent(name string) {
	if stop := h.agents[name]; stop != nil {
		stop()
		delete(h.agents, name)
		delete(h.live, name)
	}
}

func (h *harness) waitOnline(names ...string) {
	h.t.Helper()
	h.waitFor("hosts online", 20*time.Second, func() bool {
		hs, err := h.client().Hosts(h.ctx)
		if err != nil {
			return false
		}
		online := map[string]bool{}
		for _, x := range hs {
			online[x.ID] = x.Online
		}
		for _, n := range names {
			if !online[n] {
				return false
			}
		}
		return true
	})
}

func (h *harness) waitFor(what string, d time.Duration, cond func() bool) {
	h.t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (h *harness) migration(id string) api.Migration {
	m, err := h.client().Migration(h.ctx, id)
	if err != nil {
		return api.Migration{}
	}
	return m
}

// TestMigrationFailures injects each failure at each phase of a migration
// of a VM from h1 to h2 and checks the outcome and the invariant: never two
// running copies, and at the end exactly one, holding the VM's bytes, with
// no copy left on the other host.
func TestMigrationFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("orchestration failure matrix: skipped in -short mode")
	}
	// "armed": the source completed and the destination was told to
	// resume once verified; it holds the whole stream, unverified.
	phases := []string{"preparing", "transferring", "armed", "switch-over"}
	gates := map[string]struct{ host, gate string }{
		"preparing":    {"h2", gatePrepare},
		"transferring": {"h1", gateEnd},
		"armed":        {"h2", gateVerify},
		"switch-over":  {"h2", gateResume},
	}
	failures := []string{"source-dies", "destination-dies", "destination-fails", "link-cut", "mmc-restart", "cancel"}
	want := func(phase, failure string) string {
		switch {
		case phase == "switch-over":
			return "completed" // committed: only forward
		case phase == "armed" && failure == "destination-fails":
			return "failed" // its own word that its copy cannot run
		case phase == "armed":
			return "completed" // only the destination decides now
		case failure == "cancel":
			return "cancelled"
		case phase == "transferring" && failure == "mmc-restart":
			return "completed" // the transfer went on without the MMC
		}
		return "failed"
	}
	for _, phase := range phases {
		for _, failure := range failures {
			t.Run(phase+"/"+failure, func(t *testing.T) {
				t.Parallel()
				h := newHarness(t)
				const vm = "vm1"
				original := h.createOnH1(t, vm)
				g := gates[phase]
				h.drivers[g.host].hold(g.gate)
				created, err := h.client().Migrate(h.ctx, api.MigrateRequest{VM: vm, To: "h2"})
				if err != nil {
					t.Fatal(err)
				}
				id := created.ID
				h.waitFor("migration "+phase, 20*time.Second, func() bool {
					if phase == "armed" {
						return !h.migration(id).ArmedAt.IsZero() && h.drivers["h2"].atGate(gateVerify)
					}
					return string(h.migration(id).State) == phase
				})
				if phase == "transferring" {
					// Let bytes flow: the source holds only its last chunk.
					h.waitFor("bytes flowing", 10*time.Second, func() bool {
						st, _ := h.drivers["h1"].MigrationStatus(h.ctx, vm)
						return st.Transferred > 0
					})
				}
				var cancelErr error
				var cancelled api.Migration
				cancelDone := make(chan struct{})
				switch failure {
				case "source-dies", "destination-dies":
					host := map[string]string{"source-dies": "h1", "destination-dies": "h2"}[failure]
					h.stopAgent(host)
					time.Sleep(300 * time.Millisecond)
					h.drivers[g.host].release(g.gate)
					time.Sleep(300 * time.Millisecond)
					h.startAgent(host)
					close(cancelDone)
				case "destination-fails":
					h.drivers["h2"].mu.Lock()
					h.drivers["h2"].badImage = true
					h.drivers["h2"].mu.Unlock()
					h.drivers[g.host].release(g.gate)
					close(cancelDone)
				case "link-cut":
					h.waitFor("the link", 10*time.Second, func() bool { return agent.CutLinkForTest(h.agentOf(t, "h1"), "migration/"+id) })
					h.drivers[g.host].release(g.gate)
					close(cancelDone)
				case "mmc-restart":
					h.stopMMCNow()
					time.Sleep(300 * time.Millisecond)
					h.drivers[g.host].release(g.gate)
					h.startMMC()
					close(cancelDone)
				case "cancel":
					go func() {
						defer close(cancelDone)
						cancelled, cancelErr = h.client().CancelMigration(h.ctx, id)
					}()
					time.Sleep(300 * time.Millisecond)
					h.drivers[g.host].release(g.gate)
				}
				<-cancelDone
				var m api.Migration
				h.waitFor("an outcome", 60*time.Second, func() bool {
					m = h.migration(id)
					return m.State == "completed" || m.State == "failed" || m.State == "cancelled"
				})
				if w := want(phase, failure); string(m.State) != w {
					t.Fatalf("outcome %s (%s), want %s", m.State, m.Error, w)
				}
				if failure == "cancel" {
					if phase == "switch-over" || phase == "armed" {
						if cancelErr == nil {
							t.Fatalf("a committed migration was cancelled: %+v", cancelled)
						}
					} else if cancelErr != nil || cancelled.State != "cancelled" {
						t.Fatalf("cancel answered %+v, %v", cancelled, cancelErr)
					}
				}
				// Exactly one copy left, running, with the VM's bytes, on the
				// side the outcome names (cleanups of an agent that was away
				// included).
				home, other := "h1", "h2"
				if m.State == "completed" {
					home, other = "h2", "h1"
					if !m.Verified || m.TotalMS <= 0 || m.BytesOnWire == 0 {
						t.Fatalf("completed without a full report: %+v", m)
					}
					// The destination recorded that its copy may run
					// before it resumed it.
					if _, err := os.Stat(filepath.Join(h.dir, "h2", "migrations", id+".resumed")); err != nil {
						t.Fatalf("no resume record on the destination: %v", err)
					}
					if phase == "armed" && failure == "mmc-restart" && m.CommittedAt.Sub(m.ResumedAt) < 200*time.Millisecond {
						// It verified while the MMC was down.
						t.Fatalf("an armed destination waited for the commit: resumed %v, committed %v", m.ResumedAt, m.CommittedAt)
					}
				}
				h.checkOneCopy(t, vm, home, other, original)
			})
		}
	}
}

// TestArmedDestinationGone: an armed migration whose destination agent
// restarted (its job gone) and whose copy then shows failed. If the agent
// never recorded resuming the copy, the copy never ran and the MMC rolls
// back: the VM runs on at the source. If it did record it (it may have
// resumed, then lost the copy), the MMC cannot tell whether the copy ran
// and does not roll back: the VM stays paused at the source, never two
// running.
func TestArmedDestinationGone(t *testing.T) {
	for _, mayHaveRun := range []bool{false, true} {
		t.Run(fmt.Sprintf("may-have-run=%v", mayHaveRun), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			const vm = "vm1"
			original := h.createOnH1(t, vm)
			h.drivers["h2"].hold(gateVerify)
			created, err := h.client().Migrate(h.ctx, api.MigrateRequest{VM: vm, To: "h2"})
			if err != nil {
				t.Fatal(err)
			}
			id := created.ID
			h.waitFor("armed", 20*time.Second, func() bool {
				return !h.migration(id).ArmedAt.IsZero() && h.drivers["h2"].atGate(gateVerify)
			})
			h.stopAgent("h2")
			if mayHaveRun {
				dir := filepath.Join(h.dir, "h2", "migrations")
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, id+".resumed"), []byte("test\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			h.drivers["h2"].mu.Lock()
			h.drivers["h2"].badImage = true
			h.drivers["h2"].mu.Unlock()
			h.drivers["h2"].release(gateVerify)
			h.startAgent("h2")
			h.waitOnline("h2")
			if !mayHaveRun {
				h.waitFor("the rollback", 30*time.Second, func() bool { return h.migration(id).State == "failed" })
				h.checkOneCopy(t, vm, "h1", "h2", original)
				return
			}
			h.waitFor("the destination's failure reported", 10*time.Second, func() bool {
				st, err := h.drivers["h2"].MigrationStatus(h.ctx, vm)
				return err == nil && st.State == hypervisor.MigFailed
			})
			time.Sleep(3 * time.Second) // several of the orchestrator's polls
			if m := h.migration(id); m.State != "transferring" {
				t.Fatalf("an armed migration whose destination may have run ended %s (%s)", m.State, m.Error)
			}
			if n := h.w.copies(vm); n != 0 {
				t.Fatalf("%d running copies, want none (paused at the source)", n)
			}
			if p := h.w.problems(); len(p) > 0 {
				t.Fatalf("invariant broken: %v", p)
			}
		})
	}
}

// createOnH1 creates a 2 MiB VM named vm on h1 through the MMC's API (so
// that it is in the MMC's inventory; h1's driver gets the vm.create
// order), waits until the MMC sees it running there, and returns its
// bytes.
func (h *harness) createOnH1(t *testing.T, vm string) []byte {
	t.Helper()
	created, err := h.client().CreateVM(h.ctx, api.VMCreate{Name: vm, Host: "h1", Memory: 2 << 20, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	original, _, ok := h.drivers["h1"].content(created.ID)
	if !ok {
		t.Fatalf("h1's driver has no VM %s after its creation", created.ID)
	}
	h.waitFor(vm+" reported", 10*time.Second, func() bool {
		vms, _ := h.client().VMs(h.ctx)
		return len(vms) == 1 && vms[0].Host == "h1" && vms[0].State == string(hypervisor.StateRunning)
	})
	return original
}

// checkOneCopy: exactly one copy of vm is left, running on home with the
// VM's original bytes, none on other, and there never were two running.
func (h *harness) checkOneCopy(t *testing.T, vm, home, other string, original []byte) {
	t.Helper()
	h.waitFor("one running copy on "+home, 30*time.Second, func() bool {
		_, st, ok := h.drivers[home].content(vm)
		_, _, left := h.drivers[other].content(vm)
		return ok && st == hypervisor.StateRunning && !left && h.w.copies(vm) == 1
	})
	data, _, _ := h.drivers[home].content(vm)
	if !bytes.Equal(data, original) {
		t.Fatal("the VM's bytes changed")
	}
	if p := h.w.problems(); len(p) > 0 {
		t.Fatalf("invariant broken: %v", p)
	}
}

// agentOf is the running agent named name.
func (h *harness) agentOf(t *testing.T, name string) *agent.Agent {
	t.Helper()
	a := h.live[name]
	if a == nil {
		t.Fatalf("agent %s is not running", name)
	}
	return a
}

// TestPostcopyOrchestration: a migration allowed post-copy whose source
// offers it switches, the destination runs before it has every byte, and
// the source goes only once it has; failures while the MMC has the source
// switching (state postcopy, where the source's hypervisor decides) end
// on the side that hypervisor says; a committed post-copy survives an MMC
// restart. Throughout: never two running copies, and at the end one, with
// the VM's bytes.
func TestPostcopyOrchestration(t *testing.T) {
	if testing.Short() {
		t.Skip("orchestration: skipped in -short mode")
	}
	cases := []struct {
		name    string
		hold    struct{ host, gate string }
		inState string // the failure is injected when the record is in this state
		inject  func(h *harness, id string) (cancelErr error)
		want    string
	}{
		{name: "clean", want: "completed"},
		{name: "mmc-restart-while-switching", hold: struct{ host, gate string }{"h1", gateSwitch}, inState: "postcopy",
			inject: func(h *harness, id string) error {
				h.stopMMCNow()
				time.Sleep(300 * time.Millisecond)
				h.drivers["h1"].release(gateSwitch) // the source switches while the MMC is away
				time.Sleep(300 * time.Millisecond)
				h.startMMC()
				return nil
			}, want: "completed"},
		{name: "source-dies-while-switching", hold: struct{ host, gate string }{"h1", gateSwitch}, inState: "postcopy",
			inject: func(h *harness, id string) error {
				h.stopAgent("h1") // its stream goes: the source gives up the offer and runs on
				h.drivers["h1"].release(gateSwitch)
				time.Sleep(300 * time.Millisecond)
				h.startAgent("h1")
				return nil
			}, want: "failed"},
		{name: "cancel-while-switching", hold: struct{ host, gate string }{"h1", gateSwitch}, inState: "postcopy",
			inject: func(h *harness, id string) error {
				_, err := h.client().CancelMigration(h.ctx, id)
				h.drivers["h1"].release(gateSwitch)
				return err
			}, want: "completed"},
		{name: "mmc-restart-after-commit", hold: struct{ host, gate string }{"h2", gateResume}, inState: "switch-over",
			inject: func(h *harness, id string) error {
				h.stopMMCNow()
				time.Sleep(300 * time.Millisecond)
				h.drivers["h2"].release(gateResume)
				h.startMMC()
				return nil
			}, want: "completed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			const vm = "vm1"
			original := h.createOnH1(t, vm)
			if tc.hold.gate != "" {
				h.drivers[tc.hold.host].hold(tc.hold.gate)
			}
			created, err := h.client().Migrate(h.ctx, api.MigrateRequest{VM: vm, To: "h2", Options: migration.Options{AllowPostcopy: true}})
			if err != nil {
				t.Fatal(err)
			}
			id := created.ID
			var cancelErr error
			if tc.inject != nil {
				h.waitFor("migration "+tc.inState, 20*time.Second, func() bool { return string(h.migration(id).State) == tc.inState })
				cancelErr = tc.inject(h, id)
			}
			var m api.Migration
			h.waitFor("an outcome", 60*time.Second, func() bool {
				m = h.migration(id)
				return m.State == "completed" || m.State == "failed" || m.State == "cancelled"
			})
			if string(m.State) != tc.want {
				t.Fatalf("outcome %s (%s), want %s", m.State, m.Error, tc.want)
			}
			if tc.name == "cancel-while-switching" && cancelErr == nil {
				t.Fatal("a migration switching to post-copy was cancelled")
			}
			home, other := "h1", "h2"
			if m.State == "completed" {
				home, other = "h2", "h1"
				if !m.Postcopy || !m.Verified || m.TotalMS <= 0 || m.PausedAt.IsZero() {
					t.Fatalf("completed without a post-copy report: %+v", m)
				}
			}
			h.checkOneCopy(t, vm, home, other, original)
		})
	}
}
