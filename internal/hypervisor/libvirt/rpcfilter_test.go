package libvirt

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/ferry-vm/ferry/internal/hypervisor"
	"github.com/ferry-vm/ferry/internal/hypervisor/libvirt/lvtest"
)

// xdr builds XDR for tests.
type xdr []byte

func (x xdr) u32(v uint32) xdr { return binary.BigEndian.AppendUint32(x, v) }
func (x xdr) str(s string) xdr {
	x = x.u32(uint32(len(s)))
	x = append(x, s...)
	for len(x)%4 != 0 {
		x = append(x, 0)
	}
	return x
}

// packet is a libvirt RPC packet: header fields, then body.
func packet(prog, vers, proc, typ uint32, body []byte) []byte {
	p := xdr(nil).u32(uint32(rpcHeaderLen + len(body))).u32(prog).u32(vers).u32(proc).u32(typ).u32(7).u32(0)
	return append(p, body...)
}

func call(proc uint32, body []byte) []byte { return packet(progRemote, 1, proc, msgCall, body) }

// migrateBody is a Prepare3Params/Finish3Params body: string params,
// an unsigned long long, a cookie and flags.
func migrateBody(strs ...string) []byte {
	x := xdr(nil).u32(uint32(len(strs)/2 + 1))
	for i := 0; i+1 < len(strs); i += 2 {
		x = x.str(strs[i]).u32(tpString).str(strs[i+1])
	}
	x = x.str("bandwidth").u32(tpUllong).u32(0).u32(100)
	return x.str("cookie").u32(0)
}

const okXML = "<domain type='qemu'><name>web1</name><memory>65536</memory></domain>"

func TestRPCFilter(t *testing.T) {
	allowed := [][]byte{
		call(procAuthList, nil),
		call(procConnectOpen, xdr(nil).u32(1).str("qemu:///system").u32(0)),
		call(procConnectSupportsFeature, xdr(nil).u32(4)),
		packet(progKeepalive, 1, keepalivePing, msgMessage, nil),
		call(procMigratePrepare3Params, migrateBody("destination_xml", okXML, "migrate_uri", "unix:///run/ferry/libvirt/web1/qemu.sock")),
		call(procMigratePrepare3Params, migrateBody("destination_xml", okXML, "destination_name", "web1", "migrate_disks", "vda", "migrate_disks", "vdb")),
		call(procMigrateFinish3Params, migrateBody("destination_name", "web1")),
		call(procConnectClose, nil),
	}
	f := rpcFilter{vm: "web1"}
	var all []byte
	for _, p := range allowed {
		all = append(all, p...)
	}
	// Fed in awkward pieces: the same packets come out, whole.
	var out []byte
	for i := 0; i < len(all); i += 13 {
		got, err := f.Feed(all[i:min(i+13, len(all))])
		if err != nil {
			t.Fatalf("at byte %d: %v", i, err)
		}
		out = append(out, got...)
	}
	if string(out) != string(all) {
		t.Fatalf("forwarded %d bytes, want %d", len(out), len(all))
	}

	for name, p := range map[string][]byte{
		"list domains":        call(273, xdr(nil).u32(1).u32(0)),
		"define XML":          call(11, xdr(nil).str(okXML)),
		"create XML":          call(10, xdr(nil).str(okXML).u32(0)),
		"QEMU monitor":        packet(0x20008087, 1, 1, msgCall, nil),
		"call with fds":       packet(progRemote, 1, procConnectOpen, 4, nil),
		"a reply":             packet(progRemote, 1, procConnectOpen, 1, nil),
		"version 2":           packet(progRemote, 2, procConnectOpen, msgCall, nil),
		"prepare another VM":  call(procMigratePrepare3Params, migrateBody("destination_xml", strings.Replace(okXML, "web1", "db", 1))),
		"prepare renamed":     call(procMigratePrepare3Params, migrateBody("destination_xml", okXML, "destination_name", "db")),
		"prepare twice named": call(procMigratePrepare3Params, migrateBody("destination_xml", okXML, "destination_xml", "<domain><name>db</name></domain>")),
		"prepare without XML": call(procMigratePrepare3Params, migrateBody("migrate_uri", "unix:///x")),
		"prepare bad XML":     call(procMigratePrepare3Params, migrateBody("destination_xml", "<domain><name>web1")),
		"finish another VM":   call(procMigrateFinish3Params, migrateBody("destination_name", "db")),
		"finish unnamed":      call(procMigrateFinish3Params, migrateBody()),
		"truncated params":    call(procMigratePrepare3Params, xdr(nil).u32(3).str("destination_xml")),
		"too many params":     call(procMigratePrepare3Params, xdr(nil).u32(65)),
		"unknown param type":  call(procMigratePrepare3Params, xdr(nil).u32(1).str("x").u32(9).u32(0)),
		"tiny length":         xdr(nil).u32(8).u32(0),
		"huge length":         xdr(nil).u32(rpcMaxPacket + 1),
	} {
		f := rpcFilter{vm: "web1"}
		// An allowed packet first: it is forwarded, the refused one is not.
		first := call(procAuthList, nil)
		got, err := f.Feed(append(append([]byte(nil), first...), p...))
		if !errors.Is(err, errRefused) {
			t.Errorf("%s: %v, want refused", name, err)
		}
		if string(got) != string(first) {
			t.Errorf("%s: forwarded %d bytes, want only the allowed packet before it", name, len(got))
		}
	}
}

// Over a real libvirtd: the connection PrepareIncoming hands the MA lets
// the source open libvirt but not list (or define) domains, and ends at
// the first refused call.
func TestIncomingConnectionIsFiltered(t *testing.T) {
	lvtest.RequireRoot(t)
	lvtest.EnsureSystemDaemon(t)
	d, err := New(context.Background(), Config{SocketDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, conn, err := d.PrepareIncoming(context.Background(), hypervisor.Spec{Name: "lvguard", Memory: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d.forgetIncoming("lvguard")
	l := golibvirt.NewWithDialer(dialers.NewAlreadyConnected(conn))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		t.Fatalf("opening libvirt through the filter: %v", err)
	}
	if _, _, err := l.ConnectListAllDomains(1, 0); err == nil {
		t.Fatal("the source listed the destination's domains")
	}
	if _, err := l.DomainDefineXML(okXML); err == nil {
		t.Fatal("a call after a refused one went through")
	}
}
