package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/ferry-vm/ferry/internal/api"
	"github.com/ferry-vm/ferry/internal/hypervisor/sim"
	"github.com/ferry-vm/ferry/internal/mmc"
)

// host is one simulated hypervisor host of the demo.
type host struct {
	name, site string
}

// cluster is the demo's MMC (in this process) or MMCs (--ha: child
// processes) and its agents (child processes, each with its simulated
// VMs as grandchildren).
type cluster struct {
	dir       string
	bin       string
	admin     string // the admin API the demo talks to (its URL)
	tokenFile string // the admin token, for the user's ferry ctl
	bundle    string // what agents are started with (every MMC)
	stopMMC   func()
	cl        *api.Client
	ha        *haCluster // --ha: the three MMC processes; nil: one MMC here
	agents    map[string]*exec.Cmd
	sites     map[string]site // by site name
	logFile   *os.File        // the in-process MMC's log
}

// startMMC starts the MMC in site home with its admin API on the default
// address when it is free (so that a plain `ferry ctl` reaches it), else
// on any port.
func startMMC(ctx context.Context, dir string, home site) (*cluster, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(dir, "mmc.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cfg := mmc.Config{DataDir: filepath.Join(dir, "mmc"), Listen: "127.0.0.1:0", Admin: mmc.DefaultAdmin,
		PolicyInterval: time.Second, Logger: slog.New(slog.NewTextHandler(logf, nil))}
	if home.addr != "" {
		cfg.Listen = net.JoinHostPort(home.addr, "7946")
	}
	var srv *mmc.Server
	err = home.in(func() error {
		if l, err := net.Listen("tcp", cfg.Admin); err == nil {
			l.Close()
		} else {
			cfg.Admin = "127.0.0.1:0"
		}
		var err error
		srv, err = mmc.New(cfg)
		return err
	})
	if err != nil {
		logf.Close()
		return nil, err
	}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(rctx) }()
	return &cluster{dir: dir, admin: srv.AdminURL(), tokenFile: srv.AdminTokenFile(), bundle: srv.Bundle().Encode(),
		stopMMC: func() { stop(); <-done }, logFile: logf, agents: map[string]*exec.Cmd{},
		cl: &api.Client{Base: srv.AdminURL(), Token: srv.AdminToken(), HTTP: home.httpClient()}}, nil
}

// startAgent runs `ferry agent` for host h as a simulated machine of two
// cores and 4 GiB loaded by its VMs only (every demo host shares this
// real machine; its real load would say nothing about the host).
func (c *cluster) startAgent(h host, token string, i int, where site) error {
	logf, err := os.OpenFile(filepath.Join(c.dir, h.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	listen := "127.0.0.1:0"
	if where.addr != "" {
		listen = net.JoinHostPort(where.addr, "0")
	}
	cmd := where.command(c.bin, "agent", "--data-dir", filepath.Join(c.dir, h.name), "--bundle", c.bundle,
		"--token", token, "--name", h.name, "--site", h.site, "--listen", listen,
		"--sim-host", "cores=2,memory=4GiB", "--report-interval", "1s", "--time-sync-interval", "10s",
		"--disk-id", "demo-disk-"+h.name, "--machine-id", "demo-machine-"+h.name, "--macs", fmt.Sprintf("02:fe:00:00:00:%02x", i))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C at the terminal reaches the demo,
	// which then stops the agents in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("demo: start agent %s: %w", h.name, err)
	}
	c.agents[h.name] = cmd
	return nil
}

// waitOnline waits until every named host is online.
func (c *cluster) waitOnline(ctx context.Context, n int, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		hs, err := c.cl.Hosts(ctx)
		online := 0
		for _, h := range hs {
			if h.Online {
				online++
			}
		}
		if err == nil && online == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: %d of %d hosts online: %w (see the logs in %s)", online, n, ctx.Err(), c.dir)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop stops the agents (all at once), destroys the demo's VMs and stops
// the MMC.
func (c *cluster) stop() error {
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for name, cmd := range c.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			// The VMs are detached processes (they outlive agents, as
			// QEMU does): remove them through the driver.
			d, err := sim.New(filepath.Join(c.dir, name, "vms"), c.bin)
			if err != nil {
				errs <- err
				return
			}
			vms, _ := d.List(context.Background())
			for _, vm := range vms {
				if err := d.Destroy(context.Background(), vm.ID); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	c.stopMMC()
	if c.logFile != nil {
		c.logFile.Close()
	}
	return errors.Join(all...)
}
