package libvirt

import (
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
)

// The destination's guard on the libvirt connection the source's driver
// drives its migration through. That connection reaches the destination
// libvirtd as root: unfiltered, the source host could do anything
// libvirt can on the destination. rpcFilter lets through only what a
// migration of the ordered VM needs — opening the connection, its
// authentication list, feature probes, keepalives, and Prepare and Finish
// (version 3, with parameters) of a domain of the ordered name — and
// refuses the rest, which ends the connection. It is sans-I/O: Feed takes
// the bytes the link delivered and returns the whole packets that may go
// on to libvirtd.
//
// A libvirt RPC packet (virnetprotocol.x) is a 4-byte big-endian length
// (counting itself), a 24-byte header — program, version, procedure,
// type, serial, status, each 4 bytes big-endian — and an XDR payload.

// libvirt RPC constants.
const (
	progRemote    = 0x20008086
	progKeepalive = 0x6b656570 // "keep"
	rpcVersion    = 1

	msgCall    = 0
	msgMessage = 2

	procConnectOpen            = 1
	procConnectClose           = 2
	procConnectSupportsFeature = 60
	procAuthList               = 66
	procMigratePrepare3Params  = 303
	procMigrateFinish3Params   = 306

	keepalivePing = 1
	keepalivePong = 2

	rpcHeaderLen = 4 + 24
	// rpcMaxPacket is libvirt's own limit on a message (32 MiB).
	rpcMaxPacket = 32 << 20
	// maxMigrateParams is libvirt's REMOTE_DOMAIN_MIGRATE_PARAM_LIST_MAX.
	maxMigrateParams = 64
)

// errRefused wraps every refusal.
var errRefused = errors.New("libvirt: migration connection: refused")

type rpcFilter struct {
	vm  string // the domain the order names
	buf []byte
}

// Feed appends b and returns the complete packets that may be forwarded
// (in order), or an error for the first one that may not (the caller
// ends the connection; nothing after it is forwarded).
func (f *rpcFilter) Feed(b []byte) ([]byte, error) {
	f.buf = append(f.buf, b...)
	var out []byte
	for len(f.buf) >= 4 {
		n := binary.BigEndian.Uint32(f.buf)
		if n < rpcHeaderLen || n > rpcMaxPacket {
			return out, fmt.Errorf("%w: a packet of %d bytes", errRefused, n)
		}
		if uint32(len(f.buf)) < n {
			break
		}
		if err := checkCall(f.buf[:n], f.vm); err != nil {
			return out, err
		}
		out = append(out, f.buf[:n]...)
		f.buf = f.buf[n:]
	}
	if len(f.buf) == 0 {
		f.buf = nil // release a large packet's buffer
	}
	return out, nil
}

// checkCall allows one whole client packet.
func checkCall(p []byte, vm string) error {
	be := binary.BigEndian
	prog, vers, proc, typ := be.Uint32(p[4:]), be.Uint32(p[8:]), be.Uint32(p[12:]), be.Uint32(p[16:])
	body := p[rpcHeaderLen:]
	switch {
	case prog == progKeepalive && typ == msgMessage && (proc == keepalivePing || proc == keepalivePong):
		return nil
	case prog != progRemote || vers != rpcVersion || typ != msgCall:
		return fmt.Errorf("%w: program %#x version %d type %d", errRefused, prog, vers, typ)
	}
	switch proc {
	case procConnectOpen, procConnectClose, procConnectSupportsFeature, procAuthList:
		return nil
	case procMigratePrepare3Params, procMigrateFinish3Params:
		ps, err := readMigrateParams(body)
		if err != nil {
			return fmt.Errorf("%w: procedure %d: %v", errRefused, proc, err)
		}
		return checkMigrateParams(proc, ps, vm)
	}
	return fmt.Errorf("%w: procedure %d", errRefused, proc)
}

// checkMigrateParams: Prepare must carry the domain's XML, naming vm (and
// any destination name must be vm); Finish must name vm.
func checkMigrateParams(proc uint32, ps map[string]string, vm string) error {
	if n, ok := ps["destination_name"]; ok && n != vm {
		return fmt.Errorf("%w: the migration renames the domain to %q (the order is for %s)", errRefused, n, vm)
	}
	if proc == procMigrateFinish3Params {
		if ps["destination_name"] != vm {
			return fmt.Errorf("%w: finish names no domain or another (the order is for %s)", errRefused, vm)
		}
		return nil
	}
	doc, ok := ps["destination_xml"]
	if !ok {
		return fmt.Errorf("%w: prepare without the domain's XML", errRefused)
	}
	var d struct {
		Name string `xml:"name"`
	}
	if err := xml.NewDecoder(strings.NewReader(doc)).Decode(&d); err != nil {
		return fmt.Errorf("%w: prepare: domain XML: %v", errRefused, err)
	}
	if d.Name != vm {
		return fmt.Errorf("%w: prepare of domain %q (the order is for %s)", errRefused, d.Name, vm)
	}
	return nil
}

// xdrReader reads the XDR a migration call's parameters are in.
type xdrReader struct {
	b   []byte
	err error
}

func (r *xdrReader) u32() uint32 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 4 {
		r.err = errors.New("truncated")
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

// skip drops n bytes rounded up to XDR's 4-byte alignment.
func (r *xdrReader) skip(n uint32) []byte {
	if r.err != nil {
		return nil
	}
	padded := (uint64(n) + 3) &^ 3
	if uint64(len(r.b)) < padded {
		r.err = errors.New("truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[padded:]
	return v
}

func (r *xdrReader) str() string { return string(r.skip(r.u32())) }

// Typed parameter types (virTypedParameterType).
const (
	tpInt = iota + 1
	tpUint
	tpLlong
	tpUllong
	tpDouble
	tpBoolean
	tpString
)

// readMigrateParams reads the leading typed-parameter list of a
// Prepare3Params or Finish3Params call (the cookie and flags after it are
// libvirt's to check): string parameters by name (the first of a
// repeated one, such as migrate_disks), the rest skipped.
func readMigrateParams(body []byte) (map[string]string, error) {
	r := &xdrReader{b: body}
	n := r.u32()
	if r.err == nil && n > maxMigrateParams {
		return nil, fmt.Errorf("%d parameters", n)
	}
	out := map[string]string{}
	for i := uint32(0); i < n && r.err == nil; i++ {
		name := r.str()
		switch t := r.u32(); t {
		case tpInt, tpUint, tpBoolean:
			r.u32()
		case tpLlong, tpUllong, tpDouble:
			r.u32()
			r.u32()
		case tpString:
			v := r.str()
			if r.err == nil {
				_, dup := out[name]
				if dup && (name == "destination_xml" || name == "destination_name") {
					// libvirt reads the first; Ferry checks every one.
					return nil, fmt.Errorf("parameter %q twice", name)
				}
				if !dup {
					out[name] = v
				}
			}
		default:
			if r.err == nil {
				return nil, fmt.Errorf("parameter %q of type %d", name, t)
			}
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return out, nil
}
