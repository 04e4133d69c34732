package store

import (
	"errors"
	"reflect"
	"testing"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestVMDefinitions(t *testing.T) {
	s, path := open(t)
	if _, err := s.VM("web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before any: %v", err)
	}
	spec := hypervisor.Spec{Name: "web", Memory: 512 << 20, VCPUs: 2, Machine: "q35",
		Disks: []hypervisor.Disk{{Path: "/var/lib/ferry/web.qcow2", Format: "qcow2", Boot: true}},
		NICs:  []hypervisor.NIC{{Tap: "tap0", MAC: "52:54:00:12:34:56"}}}
	if err := s.PutVM(spec); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	got, err := s2.VM("web")
	if err != nil || !reflect.DeepEqual(got, spec) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if err := s2.DeleteVM("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.VM("web"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s2.DeleteVM("web"); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
}
