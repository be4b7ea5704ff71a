package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// chunkReader returns one chunk per Read, as a socket returns what one
// write of the peer put on it, and records the space each Read was given.
type chunkReader struct {
	chunks [][]byte
	space  []int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.space = append(r.space, len(p))
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	if r.chunks[0] = r.chunks[0][n:]; len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

func TestWireReadsIntoWholeBuffer(t *testing.T) {
	reply := encode(t, &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
	r := &chunkReader{chunks: [][]byte{reply, reply, reply}}
	mr := newMsgReader(r, maxServerMessage)
	for i := range 3 {
		for range 2 {
			if _, _, err := mr.Next(); err != nil {
				t.Fatalf("round trip %d: %v", i, err)
			}
		}
		if mr.Buffered() != 0 {
			t.Fatalf("round trip %d: %d bytes left buffered", i, mr.Buffered())
		}
	}
	// Every read found the reader drained and got the whole buffer, not
	// what was left behind the previous replies.
	for i, n := range r.space {
		if n != len(mr.buf) {
			t.Fatalf("read %d was given %d bytes of space, want the whole buffer (%d); all: %v", i, n, len(mr.buf), r.space)
		}
	}
}

func TestWireFlushWith(t *testing.T) {
	errBroken := errors.New("broken pipe")
	tests := []struct {
		name       string
		buffered   string
		b          string
		writeErr   error
		wantWrites []string
		wantErr    error
	}{
		{name: "nothing buffered: b alone", b: "reply", wantWrites: []string{"reply"}},
		{name: "buffered first, one write", buffered: "notice", b: "reply", wantWrites: []string{"noticereply"}},
		{name: "buffered only", buffered: "notice", wantWrites: []string{"notice"}},
		{name: "nothing at all: no write"},
		{name: "write error", b: "reply", writeErr: errBroken, wantWrites: []string{"reply"}, wantErr: errBroken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &countingWriter{err: tt.writeErr}
			mw := newMsgWriter(w)
			mw.Raw([]byte(tt.buffered))
			b := []byte(tt.b)
			if err := mw.FlushWith(b); !errors.Is(err, tt.wantErr) {
				t.Fatalf("FlushWith() = %v, want %v", err, tt.wantErr)
			}
			var got []string
			for _, wr := range w.writes {
				got = append(got, string(wr))
			}
			if !slices.Equal(got, tt.wantWrites) {
				t.Fatalf("writes %q, want %q", got, tt.wantWrites)
			}
			if mw.Len() != 0 {
				t.Fatalf("Len() = %d after FlushWith, want 0", mw.Len())
			}
		})
	}
}

// BenchmarkRelayReplies measures the server-to-client relay primitives on
// one round trip's reply, up to its ReadyForQuery: frame the messages and
// write them to the client with FlushWith whenever no whole message is left
// buffered, as serverToClient does (without the rewrite filter, which
// rewrite's BenchmarkSession measures). The source returns the reply in as
// many reads as the buffer needs.
func BenchmarkRelayReplies(b *testing.B) {
	desc := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
	point := encode(b, desc, &pgproto3.DataRow{Values: [][]byte{[]byte("0")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'T'})
	var large []byte
	for len(large) < 48<<10 {
		large = append(large, encode(b, &pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("x"), 200)}})...)
	}
	large = append(large, encode(b, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 200")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})...)

	for _, bc := range []struct {
		name  string
		reply []byte
	}{{"point_select", point}, {"48KiB_result", large}} {
		b.Run(bc.name, func(b *testing.B) {
			src := &loopReader{chunk: bc.reply}
			mr := newMsgReader(src, maxServerMessage)
			mw := newMsgWriter(io.Discard)
			var out []byte
			b.SetBytes(int64(len(bc.reply)))
			b.ReportAllocs()
			for b.Loop() {
				for {
					typ, msg, err := mr.Next()
					if err != nil {
						b.Fatal(err)
					}
					out = append(out, msg...)
					if typ == 'Z' || !mr.HasMessage() || len(out) >= flushSize {
						if err := mw.FlushWith(out); err != nil {
							b.Fatal(err)
						}
						out = out[:0]
					}
					if typ == 'Z' {
						break
					}
				}
			}
		})
	}
}

// loopReader returns chunk on every Read, in pieces if p is short.
type loopReader struct {
	chunk []byte
	off   int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.chunk[r.off:])
	r.off = (r.off + n) % len(r.chunk)
	return n, nil
}

// The buffer grows with the bytes that arrive, not with the length a
// header claims: a client that announces a 64 MiB message and sends 5
// bytes of it costs no more than the reader's usual buffer.
func TestWireGrowsAsBytesArrive(t *testing.T) {
	header := []byte{'Q', 0x04, 0, 0, 0} // a Query of 64 MiB
	mr := newMsgReader(&chunkReader{chunks: [][]byte{header}}, 64<<20+5)
	if _, _, err := mr.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Next() = %v, want io.ErrUnexpectedEOF", err)
	}
	if len(mr.buf) > 8192 {
		t.Errorf("buffer grew to %d bytes for a 5-byte header", len(mr.buf))
	}

	// A whole large message still arrives, in pieces.
	body := bytes.Repeat([]byte{'x'}, 100_000)
	msg := append([]byte{'d', 0, 0, 0, 0}, body...)
	binary.BigEndian.PutUint32(msg[1:], uint32(4+len(body)))
	var chunks [][]byte
	for rest := msg; len(rest) > 0; rest = rest[min(len(rest), 7000):] {
		chunks = append(chunks, rest[:min(len(rest), 7000)])
	}
	mr = newMsgReader(&chunkReader{chunks: chunks}, 64<<20+5)
	typ, got, err := mr.Next()
	if err != nil || typ != 'd' || !bytes.Equal(got, msg) {
		t.Fatalf("Next() = %q, %d bytes, %v; want the whole message", typ, len(got), err)
	}
}
