package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

type perfServer struct {
	Addr string `json:"addr"`
	Key  string `json:"key"`
}

// startPerfServer runs `ferry perf server --json` and returns its first line.
func startPerfServer(t *testing.T, args ...string) perfServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, ferryBin, append([]string{"perf", "server", "--listen", "127.0.0.1:0", "--json"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	var s perfServer
	select {
	case l, ok := <-line:
		if !ok {
			t.Fatal("perf server printed nothing")
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatalf("first line %q is not the contract's JSON: %v", l, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("perf server did not print its address")
	}
	if s.Addr == "" || len(s.Key) != 44 {
		t.Fatalf("server line %+v", s)
	}
	return s
}

func TestPerfJSONContract(t *testing.T) {
	srv := startPerfServer(t)
	out, err := exec.Command(ferryBin, "perf", "client", "--server-key", srv.Key, srv.Addr, "--bytes", "32MiB", "--json", "--timeout", "60s").Output()
	if err != nil {
		t.Fatalf("perf client: %v", err)
	}
	var res map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON document on stdout: %q", out)
	}
	for _, f := range []string{"bytes", "seconds", "goodput_bps", "wire_bytes", "retransmit_ratio", "rtt_ms"} {
		if _, ok := res[f].(float64); !ok {
			t.Errorf("field %q missing or not a number in %v", f, res)
		}
	}
	if res["bytes"].(float64) != 32<<20 {
		t.Errorf("bytes = %v", res["bytes"])
	}
	if res["wire_bytes"].(float64) < res["bytes"].(float64) {
		t.Errorf("wire bytes %v below payload %v", res["wire_bytes"], res["bytes"])
	}
	if res["goodput_bps"].(float64) <= 0 || res["seconds"].(float64) <= 0 || res["rtt_ms"].(float64) <= 0 {
		t.Errorf("implausible result %v", res)
	}
}

// A client given the wrong server key never talks to that server: an
// impostor cannot answer, and the client says why.
func TestPerfWrongServerKey(t *testing.T) {
	srv := startPerfServer(t)
	other := startPerfServer(t)
	cmd := exec.Command(ferryBin, "perf", "client", "--server-key", other.Key, srv.Addr, "--bytes", "1MiB", "--timeout", "3s")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		t.Fatal("client connected to a server with another key")
	}
	if !strings.Contains(stderr.String(), "connect") {
		t.Fatalf("unclear error: %q", stderr.String())
	}
}

// With --psk the server refuses clients that do not know it.
func TestPerfPSK(t *testing.T) {
	const psk = "c2VjcmV0LXNoYXJlZC1rZXktZm9yLWZlcnJ5LXBlcmY="
	srv := startPerfServer(t, "--psk", psk)
	if err := exec.Command(ferryBin, "perf", "client", "--server-key", srv.Key, srv.Addr, "--bytes", "1MiB", "--timeout", "3s").Run(); err == nil {
		t.Fatal("client without the psk got through")
	}
	out, err := exec.Command(ferryBin, "perf", "client", "--server-key", srv.Key, "--psk", psk, srv.Addr, "--bytes", "1MiB", "--json", "--timeout", "30s").Output()
	if err != nil {
		t.Fatalf("client with the psk: %v", err)
	}
	if !bytes.Contains(out, []byte(`"bytes":1048576`)) {
		t.Fatalf("output %s", out)
	}
}

// The perf server exports its SUDP counters for Prometheus.
func TestPerfMetrics(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := startPerfServer(t, "--metrics", addr)
	if err := exec.Command(ferryBin, "perf", "client", "--server-key", srv.Key, srv.Addr, "--bytes", "4MiB", "--timeout", "30s").Run(); err != nil {
		t.Fatal(err)
	}
	var body []byte
	for i := 0; i < 50; i++ {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if bytes.Contains(body, []byte(`ferry_sudp_stream_bytes_total{direction="received",role="perf-server"} 4.194312e+06`)) {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{
		`ferry_sudp_stream_bytes_total{direction="received",role="perf-server"} 4.194312e+06`,
		`ferry_sudp_handshakes_total{result="accepted",role="perf-server"} 1`,
		`ferry_sudp_dropped_total{reason="replay",role="perf-server"} 0`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
