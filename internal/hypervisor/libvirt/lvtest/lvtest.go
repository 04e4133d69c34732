// Package lvtest runs libvirt "hosts" for tests on one machine: the
// system libvirtd (started if it is not running) and further libvirtds,
// each in a private mount namespace with its own /run/libvirt,
// /var/lib/libvirt, /etc/libvirt (a copy, with its own host UUID, as
// libvirt refuses to migrate a domain to the host it is on),
// /var/cache/libvirt, /var/log/libvirt and /run/ferry. Root only.
package lvtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SystemSocket is the system libvirtd's socket.
const SystemSocket = "/run/libvirt/libvirt-sock"

// RequireRoot skips the test, saying why, unless it runs as root with
// libvirtd and QEMU installed (scripts/install-test-deps.sh installs
// them).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("libvirt tests need root (libvirtd, mount namespaces); run the suite as root")
	}
	for _, bin := range []string{"libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img", "unshare", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (scripts/install-test-deps.sh installs libvirt and QEMU): %v", bin, err)
		}
	}
}

// answers: something accepts connections on socket.
func answers(socket string) bool {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// EnsureSystemDaemon starts the system libvirtd (and virtlogd) unless it
// is running; it is left running (it is the machine's).
func EnsureSystemDaemon(t testing.TB) {
	t.Helper()
	if answers(SystemSocket) {
		return
	}
	_ = exec.Command("virtlogd", "-d").Run() // fails if one runs already
	if out, err := exec.Command("libvirtd", "-d").CombinedOutput(); err != nil {
		t.Fatalf("libvirtd -d: %v: %s", err, out)
	}
	waitSocket(t, SystemSocket)
}

func waitSocket(t testing.TB, socket string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !answers(socket); {
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not come up on %s", socket)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Host is a libvirtd in its own mount namespace.
type Host struct {
	Dir string
	// Socket is its libvirtd's socket as this namespace sees it;
	// SocketDir where its /run/ferry/libvirt is, likewise.
	Socket, SocketDir string
	holder            *exec.Cmd
}

// URI is a libvirt URI for the host's daemon from this namespace.
func (h *Host) URI() string { return "qemu+unix:///system?socket=" + h.Socket }

// NewHost starts a libvirtd host in a private mount namespace under a
// test directory; it is stopped (its domains destroyed) at the end.
func NewHost(t testing.TB, uuid string) *Host {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-lvhost-")
	if err != nil {
		t.Fatal(err)
	}
	// Short paths: Unix socket paths are at most 107 bytes.
	h := &Host{Dir: dir, Socket: filepath.Join(dir, "run", "libvirt-sock"), SocketDir: filepath.Join(dir, "ferry", "libvirt")}
	for _, d := range []string{"run", "lib/qemu/channel/target", "lib/images", "etc", "cache", "log", "ferry"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := `set -e
B=` + dir + `
chown -R libvirt-qemu:libvirt-qemu $B/lib/qemu 2>/dev/null || true
chmod 750 $B/lib/qemu
cp -a /etc/libvirt/. $B/etc/
rm -f $B/etc/qemu/*.xml
echo 'host_uuid = "` + uuid + `"' >> $B/etc/libvirtd.conf
# The two daemons share the machine's cgroups, where their domains' paths
# (id and name) would collide.
echo 'cgroup_controllers = [ ]' >> $B/etc/qemu.conf
mkdir -p /run/ferry
mount --bind $B/run /run/libvirt
mount --bind $B/lib /var/lib/libvirt
mount --bind $B/etc /etc/libvirt
mount --bind $B/cache /var/cache/libvirt
mount --bind $B/log /var/log/libvirt
mount --bind $B/ferry /run/ferry
virtlogd -d -p $B/virtlogd.pid
libvirtd -d -p $B/libvirtd.pid
exec sleep 1000000`
	h.holder = exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	out, err := os.Create(filepath.Join(dir, "host.log"))
	if err != nil {
		t.Fatal(err)
	}
	h.holder.Stdout, h.holder.Stderr = out, out
	if err := h.holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.stop(t); out.Close(); os.RemoveAll(dir) })
	waitSocket(t, h.Socket)
	return h
}

// Command runs name in the host's mount namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--mount=/proc/" + strconv.Itoa(h.holder.Process.Pid) + "/ns/mnt", "--", name}, args...)...)
}

func (h *Host) stop(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Its domains first (their QEMUs hold the namespace's mounts).
	if out, err := exec.CommandContext(ctx, "virsh", "-c", h.URI(), "list", "--name").Output(); err == nil {
		for _, name := range strings.Fields(string(out)) {
			_ = exec.CommandContext(ctx, "virsh", "-c", h.URI(), "destroy", name).Run()
		}
	}
	for _, pidFile := range []string{"libvirtd.pid", "virtlogd.pid"} {
		if b, err := os.ReadFile(filepath.Join(h.Dir, pidFile)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
		}
	}
	_ = h.holder.Process.Kill()
	_ = h.holder.Wait()
}

// Virsh runs virsh against uri and returns its output.
func Virsh(uri string, args ...string) (string, error) {
	out, err := exec.Command("virsh", append([]string{"-c", uri}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// DomainXML is a TCG domain as an operator would define it: memory MiB,
// one vCPU, booting kernel, with a qcow2 disk (if disk is not "").
func DomainXML(name string, memMiB int, kernel, disk string) string {
	var d string
	if disk != "" {
		d = `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='` + disk + `'/><target dev='vda' bus='virtio'/></disk>`
	}
	return `<domain type='qemu'>
  <name>` + name + `</name>
  <memory unit='MiB'>` + strconv.Itoa(memMiB) + `</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>` + kernel + `</kernel></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    ` + d + `
  </devices>
</domain>
`
}

// Memory reads and pauses domains of the libvirtd at URI for tests:
// guest memory in bulk through QEMU's pmemsave (libvirt's
// virDomainMemoryPeek moves 64 KiB a call, about 1 MiB/s on a loaded
// machine). It marks the domain tainted (a monitor command), which is
// why the driver does not do it.
type Memory struct{ URI string }

// ReadMemory reads n bytes of domain id's guest-physical memory at addr.
func (m Memory) ReadMemory(ctx context.Context, id string, addr, n uint64) ([]byte, error) {
	// In /tmp, which every test host shares: QEMU writes the file as
	// the user it runs as.
	dir, err := os.MkdirTemp("", "ferry-pmem-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "mem")
	cmd := fmt.Sprintf(`{"execute":"pmemsave","arguments":{"val":%d,"size":%d,"filename":%q}}`, addr, n, file)
	if out, err := exec.CommandContext(ctx, "virsh", "-c", m.URI, "qemu-monitor-command", id, cmd).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("pmemsave: %w: %s", err, out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	if uint64(len(b)) != n {
		return nil, fmt.Errorf("pmemsave wrote %d bytes, want %d", len(b), n)
	}
	return b, nil
}

// Pause pauses domain id.
func (m Memory) Pause(ctx context.Context, id string) error {
	_, err := Virsh(m.URI, "suspend", id)
	return err
}
