package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferry-vm/ferry/internal/wanlab"
	"github.com/ferry-vm/ferry/internal/wanlab/netns"
)

// The demo across the WAN lab (--wan PROFILE): the two sites sit in the
// lab's two namespaces, on either side of its emulated WAN link (TUN
// devices and a user-space link with the profile's delay, loss and rate).
// The MMC lives in the first site (its sockets are opened inside that
// namespace; this process stays where it is), the east agents beside it,
// the west agents across the WAN — so a cross-site migration crosses a
// real lossy, high-RTT path.

// labName is the demo's lab; one demo per machine at a time.
const labName = "ferry-demo"

// site is where a host runs: a namespace (none: this one) and the address
// its sockets bind.
type site struct {
	netns, addr string
}

// wanLab is the lab the demo brought up.
type wanLab struct {
	bin   string // the wanlab binary
	sites [2]site
}

// upWAN brings the lab up with profile and returns its sites.
func upWAN(ctx context.Context, ferryBin, profile string) (*wanLab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("demo: --wan needs root (network namespaces, TUN devices)")
	}
	bin := filepath.Join(filepath.Dir(ferryBin), "wanlab")
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("wanlab"); err != nil {
			return nil, errors.New("demo: --wan needs the wanlab binary next to ferry or on PATH (make build)")
		}
	}
	_ = exec.Command(bin, "down", labName).Run() // a previous demo that crashed
	out, err := exec.CommandContext(ctx, bin, "up", labName, "--profile", profile).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("demo: wanlab up --profile %s: %w: %s", profile, err, strings.TrimSpace(string(out)))
	}
	st, err := wanlab.Status(labName)
	if err != nil {
		_ = exec.Command(bin, "down", labName).Run()
		return nil, err
	}
	w := &wanLab{bin: bin}
	for i := range 2 {
		w.sites[i] = site{netns: st.Sites[i].Netns, addr: st.Sites[i].Addr}
	}
	return w, nil
}

func (w *wanLab) down() error {
	out, err := exec.Command(w.bin, "down", labName).CombinedOutput()
	if err != nil {
		return fmt.Errorf("demo: wanlab down: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// in runs fn with its sockets in s's namespace (this one if none).
func (s site) in(fn func() error) error {
	if s.netns == "" {
		return fn()
	}
	return netns.Do(s.netns, fn)
}

// command is prog run inside s's namespace.
func (s site) command(prog string, args ...string) *exec.Cmd {
	if s.netns == "" {
		return exec.Command(prog, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", s.netns, prog}, args...)...)
}

// httpClient reaches an admin API listening inside s's namespace.
func (s site) httpClient() *http.Client {
	if s.netns == "" {
		return &http.Client{Timeout: 30 * time.Second}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := s.in(func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial}}
}
