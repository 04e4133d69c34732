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
