package mmc

import (
	"net"
	"strings"
	"testing"
)

// TestPortInUse: a port another program holds stops the MMC with an error
// that says which flag chooses another, and for the SUDP port names the
// tools that share Ferry's default.
func TestPortInUse(t *testing.T) {
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	_, err = New(Config{raftStart: testRaftStart, DataDir: t.TempDir(), Listen: udp.LocalAddr().String(), Admin: "-"})
	if err == nil {
		t.Fatal("the MMC started on a UDP port another socket holds")
	}
	for _, want := range []string{"address already in use", "--listen", "Docker Swarm"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	_, err = New(Config{raftStart: testRaftStart, DataDir: t.TempDir(), Listen: "127.0.0.1:0", Admin: tcp.Addr().String()})
	if err == nil {
		t.Fatal("the MMC started its admin API on a TCP port another socket holds")
	}
	if !strings.Contains(err.Error(), "--admin") || strings.Contains(err.Error(), "Docker Swarm") {
		t.Errorf("admin error %q: want the --admin hint alone", err)
	}
}
