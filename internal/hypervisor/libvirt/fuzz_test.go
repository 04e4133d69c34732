package libvirt

import "testing"

// The driver's parsers read what libvirtd and operators hand it: none
// may panic, whatever the input.

func FuzzParseDomainXML(f *testing.F) {
	f.Add(testDomain)
	f.Add(`<domain><devices><disk type='file'><source file='/a'/></disk></devices></domain>`)
	f.Add(`<capabilities><host><secmodel><model>dac</model><baselabel type='kvm'>+1:+2</baselabel></secmodel></host></capabilities>`)
	f.Fuzz(func(t *testing.T, doc string) {
		disks, err := parseDisks(doc, false)
		if err != nil && disks != nil {
			t.Fatal("disks with an error")
		}
		for _, d := range disks {
			if d.Path == "" {
				t.Fatal("a disk without a path")
			}
		}
		if uid, gid, ok, err := qemuIDs(doc); err == nil && ok && (uid < 0 || gid < 0) {
			t.Fatalf("negative ids %d:%d", uid, gid)
		}
	})
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"qemu:///system", "qemu+unix:///system?socket=/x", "qemu+ssh://h/system", "%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := parseURI(s)
		if err == nil && (tg.Socket == "" || tg.Socket[0] != '/' || (tg.Open != "qemu:///system" && tg.Open != "qemu:///session")) {
			t.Fatalf("parseURI(%q) = %+v", s, tg)
		}
	})
}

// FuzzRPCFilter: whatever the source sends, the filter neither panics
// nor forwards anything but whole packets that pass checkCall.
func FuzzRPCFilter(f *testing.F) {
	f.Add(call(procAuthList, nil))
	f.Add(call(procMigratePrepare3Params, migrateBody("destination_xml", okXML)))
	f.Add(call(procMigrateFinish3Params, migrateBody("destination_name", "web1")))
	f.Add(call(273, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		fl := rpcFilter{vm: "web1"}
		out, _ := fl.Feed(in)
		for len(out) > 0 {
			if len(out) < rpcHeaderLen {
				t.Fatalf("forwarded a fragment of %d bytes", len(out))
			}
			n := int(out[0])<<24 | int(out[1])<<16 | int(out[2])<<8 | int(out[3])
			if n < rpcHeaderLen || n > len(out) {
				t.Fatalf("forwarded a packet of length %d with %d bytes left", n, len(out))
			}
			if err := checkCall(out[:n], "web1"); err != nil {
				t.Fatalf("forwarded a refused packet: %v", err)
			}
			out = out[n:]
		}
	})
}
