package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAgentVersionSkew: an agent built as another release (same control
// protocol) logs in beside one of the MMC's own release; `ferry ctl
// agents list` names each one's release and flags the one that differs.
func TestAgentVersionSkew(t *testing.T) {
	t.Parallel()
	old := filepath.Join(t.TempDir(), "ferry-old")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=0.9.0-old", "-o", old, "github.com/ferry-vm/ferry/cmd/ferry")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the older release: %v: %s", err, out)
	}
	c := newCluster(t)
	var tok struct {
		Token string `json:"token"`
	}
	if err := c.ctl(&tok, "tokens", "create", "--uses", "2"); err != nil {
		t.Fatal(err)
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp"))
	c.startAgent("same", "--token", tok.Token, "--metrics", metrics)
	dir := filepath.Join(t.TempDir(), "older")
	startCmd(t, "agent older", exec.Command(old, "agent", "--data-dir", dir, "--bundle", c.bundle, "--name", "older",
		"--disk-id", "disk-older", "--macs", "02:00:00:00:00:99", "--token", tok.Token))
	var agents []struct {
		Hostname    string `json:"hostname"`
		Online      bool   `json:"online"`
		Version     string `json:"version"`
		Protocol    int    `json:"protocol"`
		VersionSkew bool   `json:"version_skew"`
	}
	c.waitFor("both agents online", func() bool {
		agents = nil
		if c.ctl(&agents, "agents", "list") != nil || len(agents) != 2 {
			return false
		}
		return agents[0].Online && agents[1].Online
	})
	// The agent's probes, beside its metrics: alive, and ready once
	// logged in.
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready: logged in at the MMC"} {
		resp, err := http.Get("http://" + metrics + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != want {
			t.Errorf("agent %s: %d %q, want 200 %q", path, resp.StatusCode, b, want)
		}
	}
	var mmcVersion struct {
		Version string `json:"version"`
	}
	out, err := exec.Command(ferryBin, "version", "-o", "json").Output()
	if err != nil || json.Unmarshal(out, &mmcVersion) != nil || mmcVersion.Version == "" {
		t.Fatalf("ferry version: %v: %q", err, out)
	}
	for _, a := range agents {
		if a.Protocol != 1 {
			t.Errorf("%s: protocol %d, want 1", a.Hostname, a.Protocol)
		}
		switch a.Hostname {
		case "older":
			if a.Version != "0.9.0-old" || !a.VersionSkew {
				t.Errorf("older agent: version %q skew %v, want 0.9.0-old flagged", a.Version, a.VersionSkew)
			}
		default:
			if a.Version != mmcVersion.Version || a.VersionSkew {
				t.Errorf("%s: version %q skew %v, want the MMC's %q unflagged", a.Hostname, a.Version, a.VersionSkew, mmcVersion.Version)
			}
		}
	}
}
