package main

import (
	"reflect"
	"testing"

	"github.com/ferry-vm/ferry/internal/hypervisor"
)

func TestParseDiskAndNIC(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want hypervisor.Disk
		bad  bool
	}{
		{in: "/d/a.qcow2", want: hypervisor.Disk{Path: "/d/a.qcow2"}},
		{in: "/d/a.img,format=raw,shared,boot", want: hypervisor.Disk{Path: "/d/a.img", Format: "raw", Shared: true, Boot: true}},
		{in: ",boot", bad: true},
		{in: "/d/a,size=1G", bad: true},
	} {
		got, err := parseDisk(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("--disk %q: %+v, %v", tc.in, got, err)
		}
	}
	for _, tc := range []struct {
		in   string
		want hypervisor.NIC
		bad  bool
	}{
		{in: "user", want: hypervisor.NIC{}},
		{in: "tap=tap0,mac=52:54:00:00:00:01,model=e1000", want: hypervisor.NIC{Tap: "tap0", MAC: "52:54:00:00:00:01", Model: "e1000"}},
		{in: "tap=", bad: true},
		{in: "bridge=br0", bad: true},
	} {
		got, err := parseNIC(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("--nic %q: %+v, %v", tc.in, got, err)
		}
	}
}
