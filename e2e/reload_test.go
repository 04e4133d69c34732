package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMMCReload: SIGHUP makes a running MMC re-read its --config file's
// log level and retention: a lower audit-max-entries prunes the audit log
// at once; a file that does not parse changes nothing and the MMC runs on.
func TestMMCReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	data := filepath.Join(dir, "mmc")
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	conf := filepath.Join(dir, "mmc.yaml")
	write := func(extra string) {
		body := fmt.Sprintf("data-dir: %s\nlisten: 127.0.0.1:%d\nadmin: %s\n%s", data, freePort(t, "udp"), admin, extra)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("log-level: info\naudit-max-entries: 1000\n")
	p := startProc(t, "mmc", "mmc", "--config", conf)
	ctl := func(out any, args ...string) error {
		full := append([]string{"ctl", "--admin", "http://" + admin, "--token-file", filepath.Join(data, "admin.token")}, args...)
		b, err := exec.Command(ferryBin, append(full, "-o", "json")...).Output()
		if err == nil && out != nil {
			err = json.Unmarshal(b, out)
		}
		return err
	}
	waitUntil(t, 20*time.Second, "admin API up", func() bool { return ctl(nil, "hosts", "list") == nil })
	for range 6 {
		if err := ctl(nil, "tokens", "create"); err != nil {
			t.Fatal(err)
		}
	}
	var audit []struct{ Action string }
	if err := ctl(&audit, "audit"); err != nil || len(audit) < 6 {
		t.Fatalf("audit before: %d entries (%v)", len(audit), err)
	}

	write("log-level: debug\naudit-max-entries: 3\n")
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 20*time.Second, "the reload logged", func() bool {
		return strings.Contains(p.log(), `msg="mmc: configuration reloaded"`) && strings.Contains(p.log(), "log_level=DEBUG")
	})
	// Three kept, and the pruning's own entry.
	waitUntil(t, 20*time.Second, "the audit log pruned to the new limit", func() bool {
		return ctl(&audit, "audit") == nil && len(audit) <= 4
	})

	if err := os.WriteFile(conf, []byte("log-level: [unclosed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	waitUntil(t, 20*time.Second, "the bad file refused", func() bool {
		return strings.Contains(p.log(), "mmc: reload: configuration unchanged")
	})
	if p.exited(500*time.Millisecond) || ctl(nil, "hosts", "list") != nil {
		t.Fatalf("the MMC stopped after a bad reload:\n%s", p.log())
	}
}

func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
