package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// A small QMP client of our own rather than github.com/digitalocean/go-qemu's
// qmp package: that monitor's Run cannot be bounded (no context, its
// connection is not exposed for deadlines, so a hung QEMU would hang the
// migration agent with it), its descriptor passing refuses a QEMU that does
// not advertise "oob" although getfd does not need it, and its reader can
// drop an event that arrives with the capabilities reply. QMP itself is
// one JSON object per line: a greeting, then commands answered in order
// with events interleaved.

// maxQMPLine bounds one line from QEMU; query-migrate and query-status
// answers are a few hundred bytes.
const maxQMPLine = 1 << 20

// qmpConn is one QMP session on a VM's monitor socket.
type qmpConn struct {
	c   *net.UnixConn
	r   *bufio.Reader
	ctx context.Context
}

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qemu: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// dialQMP connects to the monitor at path and negotiates capabilities.
// Every read and write is bounded by ctx's deadline, or by 10 s.
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qemu: monitor: %w", err)
	}
	q := &qmpConn{c: c.(*net.UnixConn), r: bufio.NewReaderSize(c, 4096), ctx: ctx}
	q.deadline()
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	line, err := q.readLine()
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err == nil && greeting.QMP == nil {
		err = fmt.Errorf("not a QMP greeting: %.100q", line)
	}
	if err == nil {
		err = q.run("qmp_capabilities", nil, nil, nil)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qemu: monitor %s: %w", path, err)
	}
	return q, nil
}

func (q *qmpConn) deadline() {
	dl, ok := q.ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	_ = q.c.SetDeadline(dl)
}

func (q *qmpConn) Close() error { return q.c.Close() }

// readLine reads one line (without its end), refusing overlong ones.
func (q *qmpConn) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := q.r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("QMP line longer than %d bytes", maxQMPLine)
		}
		if err == nil {
			return bytes.TrimRight(line, "\r\n"), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// run executes cmd with args (marshalled as "arguments" unless nil),
// passing f's descriptor alongside (getfd) if f is not nil, and decodes
// the "return" value into out (unless nil).
func (q *qmpConn) run(cmd string, args any, out any, f *os.File) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	q.deadline()
	if f != nil {
		rights := syscall.UnixRights(int(f.Fd()))
		n, oobn, err := q.c.WriteMsgUnix(b, rights, nil)
		if err == nil && (n != len(b) || oobn != len(rights)) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
	} else if _, err := q.c.Write(b); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	for {
		line, err := q.readLine()
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		ret, err := parseReply(cmd, line)
		if errors.Is(err, errEvent) {
			continue
		}
		if err != nil {
			return err
		}
		if out != nil {
			if err := json.Unmarshal(ret, out); err != nil {
				return fmt.Errorf("qemu: %s: decoding the answer: %w", cmd, err)
			}
		}
		return nil
	}
}

var errEvent = errors.New("an event, not a reply")

// parseReply reads one line QEMU sent in answer to cmd: the raw "return"
// value, a *QMPError, errEvent for an asynchronous event, or an error for
// anything else.
func parseReply(cmd string, line []byte) (json.RawMessage, error) {
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
		Event string `json:"event"`
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("qemu: %s: malformed QMP line %.100q: %w", cmd, line, err)
	}
	switch {
	case r.Event != "":
		return nil, errEvent
	case r.Error != nil:
		return nil, &QMPError{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	case r.Return != nil:
		return r.Return, nil
	}
	return nil, fmt.Errorf("qemu: %s: QMP line is neither a reply nor an event: %.100q", cmd, line)
}
