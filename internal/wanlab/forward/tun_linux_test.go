package forward

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferry-vm/ferry/internal/wanlab/link"
)

// inNetns runs fn on a thread switched into the named namespace
// (/var/run/netns/name). If the switch back fails the thread stays locked
// and dies with its goroutine.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/var/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err) // thread stays locked: discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// tunPair makes two namespaces, each with a TUN device fwdt0 addressed
// 198.18.0.1/30 and 198.18.0.2/30; all removed when the test ends.
func tunPair(t *testing.T) (ns [2]string, addr [2]string, dev [2]*TUNDevice) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, TUN)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no /dev/net/tun: %v", err)
	}
	for _, tool := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	addr = [2]string{"198.18.0.1", "198.18.0.2"}
	for i, side := range []string{"a", "b"} {
		ns[i] = fmt.Sprintf("ferry-fwdtest-%d-%s", os.Getpid(), side)
		run(t, "ip", "netns", "add", ns[i])
		name := ns[i]
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
		err := inNetns(ns[i], func() error {
			var err error
			dev[i], err = OpenTUN("fwdt0")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		d := dev[i]
		t.Cleanup(func() { d.Close() })
		if err := d.SetMTU(1500); err != nil {
			t.Fatal(err)
		}
		if err := d.SetTxQueueLen(4096); err != nil {
			t.Fatal(err)
		}
		run(t, "ip", "-n", ns[i], "link", "set", "lo", "up")
		run(t, "ip", "-n", ns[i], "addr", "add", addr[i]+"/30", "dev", d.Name())
		run(t, "ip", "-n", ns[i], "link", "set", d.Name(), "up")
	}
	if out := run(t, "ip", "-n", ns[0], "link", "show", "fwdt0"); !strings.Contains(out, "qlen 4096") {
		t.Errorf("txqueuelen not set: %s", out)
	}
	return ns, addr, dev
}

func startForwarder(t *testing.T, f *Forwarder) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestTUNNamespacesPing joins two namespaces with two TUN devices and a
// 20 ms one-way link each way; ping must see 40 ms ± 10 %.
func TestTUNNamespacesPing(t *testing.T) {
	const delay = 20 * time.Millisecond
	ns, addr, dev := tunPair(t)
	cfg := link.Config{Delay: delay}
	f := New(dev[0], dev[1], mustLink(t, cfg), mustLink(t, cfg), Options{})
	startForwarder(t, f)

	out := run(t, "ip", "netns", "exec", ns[0], "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", addr[1])
	m := regexp.MustCompile(`= ([\d.]+)/([\d.]+)/([\d.]+)/`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rtt in ping output:\n%s", out)
	}
	avg, _ := strconv.ParseFloat(m[2], 64)
	minRTT, _ := strconv.ParseFloat(m[1], 64)
	maxRTT, _ := strconv.ParseFloat(m[3], 64)
	t.Logf("ping RTT min/avg/max = %.3f/%.3f/%.3f ms (configured %v)", minRTT, avg, maxRTT, 2*delay)
	want := float64(2*delay) / 1e6
	if avg < want*0.9 || avg > want*1.1 || minRTT < want {
		t.Errorf("RTT avg %.3f ms (min %.3f), want %.1f ms ± 10%%", avg, minRTT, want)
	}
	ab, ba := f.Stats()
	if ab.Delivered < 5 || ba.Delivered < 5 {
		t.Errorf("stats ab %+v ba %+v", ab, ba)
	}
}

// TestTUNThroughput (opt-in: FERRY_WANLAB_TUNBENCH=1) blasts UDP from one
// namespace to the other through a 1 Gbit/s, 1 ms link and reports what
// arrives and the process's CPU (sender and receiver included).
func TestTUNThroughput(t *testing.T) {
	if os.Getenv("FERRY_WANLAB_TUNBENCH") == "" {
		t.Skip("set FERRY_WANLAB_TUNBENCH=1 to run (2 s of full CPU)")
	}
	ns, addr, dev := tunPair(t)
	rate := 1e9
	if r := os.Getenv("FERRY_WANLAB_TUNBENCH_RATE"); r != "" {
		rate, _ = link.ParseRate(r)
	}
	cfg := link.Config{Rate: rate, Delay: time.Millisecond}
	f := New(dev[0], dev[1], mustLink(t, cfg), mustLink(t, cfg), Options{})
	startForwarder(t, f)

	var rx, tx int
	if err := inNetns(ns[1], func() (err error) {
		rx, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		_ = unix.SetsockoptInt(rx, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
		_ = unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000})
		return unix.Bind(rx, &unix.SockaddrInet4{Port: 9000, Addr: [4]byte{198, 18, 0, 2}})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rx)
	if err := inNetns(ns[0], func() (err error) {
		tx, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tx)
	_ = addr
	dst := &unix.SockaddrInet4{Port: 9000, Addr: [4]byte{198, 18, 0, 2}}
	const dur = 2 * time.Second
	got := make(chan int)
	go func() {
		buf := make([]byte, 2048)
		n := 0
		for {
			if _, _, err := unix.Recvfrom(rx, buf, 0); err != nil {
				got <- n
				return
			}
			n++
		}
	}()
	payload := make([]byte, 1472) // 1500-byte IP packets
	c0, t0 := cpuTime(), time.Now()
	sent := 0
	for time.Since(t0) < dur {
		if unix.Sendto(tx, payload, 0, dst) == nil {
			sent++
		}
	}
	n := <-got
	cpu := cpuTime() - c0
	ab, _ := f.Stats()
	t.Logf("link %.0f Mbit/s: sent %d, received %d = %.0f pkts/s = %.0f Mbit/s of IP; link %+v; process CPU %.2f cores (incl. sender/receiver)",
		rate/1e6, sent, n, float64(n)/dur.Seconds(), float64(n)*1500*8/dur.Seconds()/1e6, ab, cpu.Seconds()/(dur.Seconds()+0.2))
}
