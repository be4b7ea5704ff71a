package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
)

// encode concatenates encoded protocol messages.
func encode(t testing.TB, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatalf("encode %T: %v", m, err)
		}
	}
	return b
}

// readers wraps a stream in readers that deliver it differently: all at
// once, one byte per Read, half of what is asked, and with io.EOF returned
// together with the last bytes. The framing must not depend on it.
func readers(b []byte) map[string]io.Reader {
	return map[string]io.Reader{
		"whole":    bytes.NewReader(b),
		"one byte": iotest.OneByteReader(bytes.NewReader(b)),
		"half":     iotest.HalfReader(bytes.NewReader(b)),
		"data+EOF": iotest.DataErrReader(bytes.NewReader(b)),
	}
}

// readMessages reads typed messages until an error and returns copies of
// them, and the error. It does what the relay does between messages: shrink
// the buffer when nothing is buffered.
func readMessages(r io.Reader, maxLen int) ([][]byte, error) {
	mr := newMsgReader(r, maxLen)
	var msgs [][]byte
	for {
		typ, msg, err := mr.Next()
		if err != nil {
			return msgs, err
		}
		if typ != msg[0] {
			return msgs, fmt.Errorf("type %q, message starts with %q", typ, msg[0])
		}
		msgs = append(msgs, slices.Clone(msg))
		if mr.Buffered() == 0 {
			mr.shrink()
		}
	}
}

// readMessagesLoop frames r as the event loop does (looprelay.go): one
// Read at a time (readOnce), then every whole message buffered (ready,
// Next). A stream that ends inside a message reports io.ErrUnexpectedEOF,
// as Next does.
func readMessagesLoop(r io.Reader, maxLen int) ([][]byte, error) {
	mr := newMsgReader(r, maxLen)
	var msgs [][]byte
	for {
		rerr := mr.readOnce()
		for {
			ok, err := mr.ready()
			if err != nil {
				return msgs, err
			}
			if !ok {
				break
			}
			typ, msg, err := mr.Next()
			if err != nil || typ != msg[0] {
				return msgs, fmt.Errorf("Next after ready: %q, %v", typ, err)
			}
			msgs = append(msgs, slices.Clone(msg))
		}
		if rerr == io.EOF && mr.Buffered() > 0 {
			return msgs, io.ErrUnexpectedEOF
		}
		if rerr != nil {
			return msgs, rerr
		}
		if mr.Buffered() == 0 {
			mr.shrink()
		}
	}
}

func TestWireNext(t *testing.T) {
	pipeline := encode(t,
		&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int"},
		&pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("42")}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	)
	big := encode(t, &pgproto3.Query{String: "SELECT '" + string(bytes.Repeat([]byte("x"), 100_000)) + "'"})
	tests := []struct {
		name   string
		stream []byte
		maxLen int
		want   [][]byte // messages before the error
		err    error    // the error that ends the stream
	}{
		{"empty stream", nil, 1024, nil, io.EOF},
		{"one query", encode(t, &pgproto3.Query{String: "SELECT 1"}), 1024,
			[][]byte{encode(t, &pgproto3.Query{String: "SELECT 1"})}, io.EOF},
		{"extended pipeline", pipeline, 1024, frameAll(t, pipeline), io.EOF},
		{"message larger than the buffer", big, 1 << 20, [][]byte{big}, io.EOF},
		{"message of exactly maxLen", encode(t, &pgproto3.Sync{}), 5, frameAll(t, encode(t, &pgproto3.Sync{})), io.EOF},
		{"length 3", []byte{'Q', 0, 0, 0, 3}, 1024, nil, errInvalidLength},
		{"length 0", []byte{'Q', 0, 0, 0, 0, 'x'}, 1024, nil, errInvalidLength},
		{"negative length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, 1024, nil, errMessageTooLarge},
		{"one byte over maxLen", encode(t, &pgproto3.Query{String: "SELECT 1"}), 13, nil, errMessageTooLarge},
		{"too large after a good one", append(encode(t, &pgproto3.Sync{}), 'Q', 0, 1, 0, 0), 1024,
			frameAll(t, encode(t, &pgproto3.Sync{})), errMessageTooLarge},
		{"truncated header", []byte{'Q', 0, 0}, 1024, nil, io.ErrUnexpectedEOF},
		{"truncated body", []byte{'Q', 0, 0, 0, 9, 'S', 'E'}, 1024, nil, io.ErrUnexpectedEOF},
		{"truncated after a good one", append(encode(t, &pgproto3.Sync{}), 'S'), 1024,
			frameAll(t, encode(t, &pgproto3.Sync{})), io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for rname, r := range readers(tt.stream) {
				msgs, err := readMessages(r, tt.maxLen)
				if !errors.Is(err, tt.err) {
					t.Errorf("%s: err = %v, want %v", rname, err, tt.err)
				}
				if isFramingError(err) != isFramingError(tt.err) {
					t.Errorf("%s: isFramingError(%v) = %t", rname, err, isFramingError(err))
				}
				if !slices.EqualFunc(msgs, tt.want, bytes.Equal) {
					t.Errorf("%s: got %d messages %q, want %d", rname, len(msgs), msgs, len(tt.want))
				}
			}
			for rname, r := range readers(tt.stream) {
				msgs, err := readMessagesLoop(r, tt.maxLen)
				if !errors.Is(err, tt.err) {
					t.Errorf("event loop, %s: err = %v, want %v", rname, err, tt.err)
				}
				if !slices.EqualFunc(msgs, tt.want, bytes.Equal) {
					t.Errorf("event loop, %s: got %d messages %q, want %d", rname, len(msgs), msgs, len(tt.want))
				}
			}
		})
	}
}

// frameAll splits a well-formed stream of typed messages.
func frameAll(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		n := int(binary.BigEndian.Uint32(b[1:])) + 1
		if n < 5 || n > len(b) {
			t.Fatalf("bad frame length %d", n)
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// TestWireNextPipe reads a stream written to a pipe a few bytes at a time:
// Next waits for whole messages, and returns when the writer goes away.
func TestWireNextPipe(t *testing.T) {
	stream := encode(t, &pgproto3.Query{String: "SELECT * FROM orders WHERE id = 1"}, &pgproto3.Terminate{})
	errGone := errors.New("client gone")
	tests := []struct {
		name     string
		written  int   // bytes of stream written before closing
		closeErr error // CloseWithError argument
		want     int   // messages read
		err      error
	}{
		{"whole stream", len(stream), nil, 2, io.EOF},
		{"closed inside a message", len(stream) - 2, nil, 1, io.ErrUnexpectedEOF},
		{"closed with an error", len(stream) - 2, errGone, 1, errGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			go func() {
				for b := stream[:tt.written]; len(b) > 0; b = b[min(3, len(b)):] {
					if _, err := pw.Write(b[:min(3, len(b))]); err != nil {
						return
					}
				}
				pw.CloseWithError(tt.closeErr)
			}()
			msgs, err := readMessages(pr, 1024)
			pr.Close()
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if !slices.EqualFunc(msgs, frameAll(t, stream)[:tt.want], bytes.Equal) {
				t.Fatalf("got %q, want the first %d messages of %q", msgs, tt.want, stream)
			}
		})
	}
}

// TestWireShrink checks that shrink releases a buffer grown past 64 KiB
// once nothing is buffered, and that no byte is lost.
func TestWireShrink(t *testing.T) {
	query := func(n int) []byte {
		return encode(t, &pgproto3.Query{String: string(bytes.Repeat([]byte("x"), n))})
	}
	m1, m2, m3 := query(40_000), query(70_000), encode(t, &pgproto3.Sync{})
	mr := newMsgReader(bytes.NewReader(slices.Concat(m1, m2, m3)), 1<<20)
	steps := []struct {
		want   []byte
		shrunk bool // len(buf) is back to 8192 after shrink
	}{
		{m1, false}, // the buffer grew, but not past 64 KiB
		{m2, true},  // past 64 KiB, to m2's size: nothing else is buffered
		{m3, false}, // back to 8 KiB already
	}
	for i, st := range steps {
		_, msg, err := mr.Next()
		if err != nil || !bytes.Equal(msg, st.want) {
			t.Fatalf("step %d: Next() = %d bytes, %v; want %d bytes", i, len(msg), err, len(st.want))
		}
		before := len(mr.buf)
		mr.shrink()
		if shrunk := len(mr.buf) == 8192 && before > 8192; shrunk != st.shrunk {
			t.Fatalf("step %d: len(buf) %d -> %d after shrink with %d bytes buffered", i, before, len(mr.buf), mr.Buffered())
		}
	}
	if _, _, err := mr.Next(); err != io.EOF {
		t.Fatalf("after the last message: %v, want io.EOF", err)
	}
}

func TestWireNextStartup(t *testing.T) {
	startupMsg := encode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "alice", "database": "app"}})
	ssl := encode(t, &pgproto3.SSLRequest{})
	gss := encode(t, &pgproto3.GSSEncRequest{})
	cancel := encode(t, &pgproto3.CancelRequest{ProcessID: 7, SecretKey: []byte{0, 0, 0, 9}})
	lengthWord := func(n uint32, rest ...byte) []byte { return append(binary.BigEndian.AppendUint32(nil, n), rest...) }
	tests := []struct {
		name   string
		stream []byte
		want   [][]byte // bodies before the error
		err    error
	}{
		{"startup", startupMsg, [][]byte{startupMsg[4:]}, io.EOF},
		{"ssl then startup", append(slices.Clone(ssl), startupMsg...), [][]byte{ssl[4:], startupMsg[4:]}, io.EOF},
		{"gss", gss, [][]byte{gss[4:]}, io.EOF},
		{"cancel", cancel, [][]byte{cancel[4:]}, io.EOF},
		{"largest accepted", lengthWord(10004, make([]byte, 10000)...), [][]byte{make([]byte, 10000)}, io.EOF},
		{"one byte over 10000", lengthWord(10005, make([]byte, 10001)...), nil, errInvalidLength},
		{"length 7", lengthWord(7, 0, 3, 0), nil, errInvalidLength},
		{"length 2", lengthWord(2), nil, errInvalidLength},
		{"huge length", lengthWord(0xffffffff), nil, errInvalidLength},
		{"truncated length word", []byte{0, 0}, nil, io.ErrUnexpectedEOF},
		{"truncated body", lengthWord(16, 0, 3, 0, 0), nil, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for rname, r := range readers(tt.stream) {
				mr := newMsgReader(r, 1024)
				var bodies [][]byte
				var err error
				for {
					var body []byte
					if body, err = mr.NextStartup(); err != nil {
						break
					}
					bodies = append(bodies, slices.Clone(body))
				}
				if !errors.Is(err, tt.err) {
					t.Errorf("%s: err = %v, want %v", rname, err, tt.err)
				}
				if !slices.EqualFunc(bodies, tt.want, bytes.Equal) {
					t.Errorf("%s: got %d bodies, want %d", rname, len(bodies), len(tt.want))
				}
			}
		})
	}
}

// TestWireStartupThenTyped checks the switch from untyped startup packets to
// typed messages on one reader, with both in the same read.
func TestWireStartupThenTyped(t *testing.T) {
	startupMsg := encode(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "alice"}})
	query := encode(t, &pgproto3.Query{String: "SELECT 1"})
	mr := newMsgReader(bytes.NewReader(append(slices.Clone(startupMsg), query...)), 1024)
	body, err := mr.NextStartup()
	if err != nil {
		t.Fatal(err)
	}
	if mr.Buffered() != len(query) {
		t.Fatalf("Buffered() = %d after the startup packet, want %d", mr.Buffered(), len(query))
	}
	st, err := parseStartup(body)
	if err != nil || st.user != "alice" {
		t.Fatalf("parseStartup: %+v, %v", st, err)
	}
	typ, msg, err := mr.Next()
	if err != nil || typ != 'Q' || !bytes.Equal(msg, query) {
		t.Fatalf("Next() = %q, %q, %v", typ, msg, err)
	}
}

func TestWireParseStartup(t *testing.T) {
	body := func(kv ...string) []byte {
		b := binary.BigEndian.AppendUint32(nil, 3<<16)
		for _, s := range kv {
			b = append(append(b, s...), 0)
		}
		return append(b, 0)
	}
	tests := []struct {
		name string
		body []byte
		code string // SQLSTATE, "" if accepted
	}{
		{"user only", body("user", "alice"), ""},
		{"forwarded params", body("user", "alice", "database", "app", "application_name", "x", "client_encoding", "UTF-8", "_pq_.x", "1"), ""},
		{"no user", body("database", "app"), "28000"},
		{"empty user", body("user", ""), "28000"},
		{"too short", []byte{0, 3}, "08P01"},
		{"protocol 2", append(binary.BigEndian.AppendUint32(nil, 2<<16), 0), "08P01"},
		{"no terminator", body("user", "alice")[:15], "08P01"},
		{"key without value", append(body("user", "alice")[:14], "database\x00"...), "08P01"},
		{"bytes after terminator", append(body("user", "alice"), 'x'), "08P01"},
		{"tenant setting", body("user", "alice", "app.current_tenant_id", "evil"), "42501"},
		{"options", body("user", "alice", "options", "-c row_security=off"), "42501"},
		{"replication", body("user", "alice", "replication", "database"), "42501"},
		{"SJIS", body("user", "alice", "client_encoding", "SJIS"), "42501"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := parseStartup(tt.body)
			if tt.code == "" {
				if err != nil || st.user == "" {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			ce, ok := errors.AsType[*clientError](err)
			if !ok || ce.code != tt.code {
				t.Fatalf("err = %v, want SQLSTATE %s", err, tt.code)
			}
		})
	}
}

// countingWriter records each Write.
type countingWriter struct {
	writes [][]byte
	err    error
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, slices.Clone(p))
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

type badMessage struct{}

func (badMessage) Encode(dst []byte) ([]byte, error) {
	return append(dst, "partial"...), errors.New("cannot encode")
}

func TestWireWriter(t *testing.T) {
	t.Run("one write per flush", func(t *testing.T) {
		w := &countingWriter{}
		mw := newMsgWriter(w)
		if err := mw.Flush(); err != nil || len(w.writes) != 0 {
			t.Fatalf("empty Flush wrote %d times, err %v", len(w.writes), err)
		}
		sync := encode(t, &pgproto3.Sync{})
		mw.Raw(sync)
		if err := mw.Send(&pgproto3.Query{String: "SELECT 1"}); err != nil {
			t.Fatal(err)
		}
		want := append(slices.Clone(sync), encode(t, &pgproto3.Query{String: "SELECT 1"})...)
		if mw.Len() != len(want) {
			t.Fatalf("Len() = %d, want %d", mw.Len(), len(want))
		}
		if err := mw.Flush(); err != nil {
			t.Fatal(err)
		}
		if len(w.writes) != 1 || !bytes.Equal(w.writes[0], want) || mw.Len() != 0 {
			t.Fatalf("writes %q, Len %d; want one write %q", w.writes, mw.Len(), want)
		}
	})
	t.Run("encode error keeps the buffer", func(t *testing.T) {
		mw := newMsgWriter(&countingWriter{})
		mw.Raw([]byte("ab"))
		if err := mw.Send(badMessage{}); err == nil {
			t.Fatal("Send of a message that fails to encode returned nil")
		}
		if mw.Len() != 2 {
			t.Fatalf("Len() = %d after a failed Send, want 2", mw.Len())
		}
	})
	t.Run("write error", func(t *testing.T) {
		errBroken := errors.New("broken pipe")
		mw := newMsgWriter(&countingWriter{err: errBroken})
		mw.Raw([]byte("ab"))
		if err := mw.Flush(); !errors.Is(err, errBroken) {
			t.Fatalf("Flush() = %v, want %v", err, errBroken)
		}
	})
	t.Run("large buffer released", func(t *testing.T) {
		w := &countingWriter{}
		mw := newMsgWriter(w)
		mw.Raw(make([]byte, 1_000_000))
		if err := mw.Flush(); err != nil {
			t.Fatal(err)
		}
		if len(w.writes) != 1 || len(w.writes[0]) != 1_000_000 || cap(mw.buf) > 4*flushSize {
			t.Fatalf("%d writes, cap(buf) = %d after Flush", len(w.writes), cap(mw.buf))
		}
	})
}

// FuzzMessages feeds arbitrary bytes as a client's typed message stream.
// Whatever arrives, the reader returns exactly the bytes it was given, in
// frames no larger than maxLen, and ends with io.EOF at a frame boundary,
// io.ErrUnexpectedEOF inside a frame, or a framing error; the result does
// not depend on how the stream is split into reads.
func FuzzMessages(f *testing.F) {
	f.Add(encode(f, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.Terminate{}), uint16(1024))
	f.Add(encode(f, &pgproto3.Parse{Query: "SELECT $1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), uint16(1024))
	f.Add(encode(f, &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 9000)}, &pgproto3.CopyDone{}), uint16(65535))
	f.Add([]byte{'Q', 0, 0, 0, 3}, uint16(1024))
	f.Add([]byte{'Q', 0xff, 0xff, 0xff, 0xff}, uint16(1024))
	f.Add([]byte{'Q', 0, 0, 0, 9, 'x'}, uint16(1024))
	f.Add([]byte{'S', 0, 0, 0, 4, 'S', 0, 0, 0, 4}, uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, max16 uint16) {
		maxLen := int(max16)
		want, wantErr := readMessages(bytes.NewReader(data), maxLen)
		consumed := 0
		for i, m := range want {
			if len(m) < 5 || len(m) > maxLen || int(binary.BigEndian.Uint32(m[1:]))+1 != len(m) {
				t.Fatalf("message %d: %d bytes with length word %d (maxLen %d)", i, len(m), binary.BigEndian.Uint32(m[1:]), maxLen)
			}
			if !bytes.Equal(m, data[consumed:consumed+len(m)]) {
				t.Fatalf("message %d is not the next %d bytes of the stream", i, len(m))
			}
			consumed += len(m)
		}
		switch {
		case wantErr == io.EOF:
			if consumed != len(data) {
				t.Fatalf("io.EOF with %d of %d bytes consumed", consumed, len(data))
			}
		case wantErr == io.ErrUnexpectedEOF:
			if consumed == len(data) {
				t.Fatal("io.ErrUnexpectedEOF at a frame boundary")
			}
		case isFramingError(wantErr):
			if len(data)-consumed < 5 {
				t.Fatalf("framing error %v without a whole header", wantErr)
			}
		default:
			t.Fatalf("unexpected error %v", wantErr)
		}
		for rname, r := range readers(data) {
			if rname == "whole" {
				continue
			}
			got, err := readMessages(r, maxLen)
			if !slices.EqualFunc(got, want, bytes.Equal) || !sameError(err, wantErr) {
				t.Fatalf("%s: %d messages, %v; whole stream: %d messages, %v", rname, len(got), err, len(want), wantErr)
			}
		}
		for rname, r := range readers(data) {
			got, err := readMessagesLoop(r, maxLen)
			if !slices.EqualFunc(got, want, bytes.Equal) || !sameError(err, wantErr) {
				t.Fatalf("event loop, %s: %d messages, %v; Next: %d messages, %v", rname, len(got), err, len(want), wantErr)
			}
		}
	})
}

// FuzzNextStartup feeds arbitrary bytes as the start of a client
// connection, the way the session reads it: startup packets until a
// StartupMessage, which parseStartup checks. Errors are framing errors,
// EOFs or client errors with a SQLSTATE; an accepted startup has a user.
func FuzzNextStartup(f *testing.F) {
	startupMsg := func(params map[string]string) []byte {
		return encode(f, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	}
	f.Add(startupMsg(map[string]string{"user": "alice", "database": "app"}))
	f.Add(append(encode(f, &pgproto3.SSLRequest{}), startupMsg(map[string]string{"user": "alice"})...))
	f.Add(append(encode(f, &pgproto3.GSSEncRequest{}), encode(f, &pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}})...))
	f.Add(startupMsg(map[string]string{"user": "alice", "options": "-c row_security=off"}))
	f.Add(startupMsg(map[string]string{"database": "app"}))
	f.Add([]byte{0, 0, 0, 2})
	f.Add([]byte{0, 1, 0, 0, 0, 3, 0, 0})
	f.Add([]byte{0, 0, 0, 8, 0, 9, 0, 0})
	f.Add([]byte{0, 0, 0, 9, 0, 3, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 14, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		want := startupOutcome(t, bytes.NewReader(data), data)
		for rname, r := range readers(data) {
			if rname == "whole" {
				continue
			}
			if got := startupOutcome(t, r, data); got != want {
				t.Fatalf("%s: %s; whole stream: %s", rname, got, want)
			}
		}
	})
}

// startupOutcome reads startup packets from r (which delivers data) as the
// session does, checks each step, and describes how it ended.
func startupOutcome(t *testing.T, r io.Reader, data []byte) string {
	t.Helper()
	mr := newMsgReader(r, 1<<16)
	consumed := 0
	for {
		body, err := mr.NextStartup()
		if err != nil {
			switch {
			case err == io.EOF && consumed == len(data),
				err == io.ErrUnexpectedEOF && consumed < len(data),
				isFramingError(err) && len(data)-consumed >= 4:
				return fmt.Sprintf("after %d bytes: %v", consumed, err)
			}
			t.Fatalf("after %d of %d bytes: unexpected error %v", consumed, len(data), err)
		}
		if len(body) < 4 || len(body) > 10000 || !bytes.Equal(body, data[consumed+4:consumed+4+len(body)]) {
			t.Fatalf("after %d bytes: body of %d bytes is not the stream's", consumed, len(body))
		}
		consumed += 4 + len(body)
		switch binary.BigEndian.Uint32(body) {
		case sslRequestCode, gssEncRequestCode, cancelRequestCode:
			continue
		}
		st, err := parseStartup(body)
		if err != nil {
			ce, ok := errors.AsType[*clientError](err)
			if !ok {
				t.Fatalf("parseStartup: %v is not a client error", err)
			}
			switch ce.code {
			case "08P01", "28000", "42501":
			default:
				t.Fatalf("parseStartup: SQLSTATE %s", ce.code)
			}
			return "refused " + ce.code
		}
		if st.user == "" || st.major != 3 {
			t.Fatalf("accepted startup without a user or protocol 3: %+v", st)
		}
		return "accepted " + st.user
	}
}

// sameError reports whether two errors are the same sentinel (or both
// framing errors of the same kind).
func sameError(a, b error) bool {
	for _, e := range []error{io.EOF, io.ErrUnexpectedEOF, errInvalidLength, errMessageTooLarge} {
		if errors.Is(a, e) != errors.Is(b, e) {
			return false
		}
	}
	return true
}
