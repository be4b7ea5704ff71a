package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Framing errors: the stream cannot be resynchronised after them, so the
// connection is closed with a protocol violation (08P01).
var (
	errMessageTooLarge = errors.New("message too large")
	errInvalidLength   = errors.New("invalid message length")
)

// isFramingError reports whether err means the peer sent a broken frame.
func isFramingError(err error) bool {
	return errors.Is(err, errMessageTooLarge) || errors.Is(err, errInvalidLength)
}

// msgReader frames PostgreSQL protocol messages read from a stream without
// decoding them. It is not safe for concurrent use.
//
// A message returned by Next aliases the reader's buffer and is valid only
// until the next call: copy what you keep.
type msgReader struct {
	r          io.Reader
	buf        []byte
	start, end int // unread bytes are buf[start:end]
	maxLen     int // largest accepted message, header included
}

func newMsgReader(r io.Reader, maxLen int) *msgReader {
	return &msgReader{r: r, buf: make([]byte, 8192), maxLen: maxLen}
}

// Next returns the next typed message: its type byte and the whole message
// (type, length word and body), so it can be forwarded byte for byte.
func (mr *msgReader) Next() (typ byte, msg []byte, err error) {
	if err := mr.fill(5); err != nil {
		return 0, nil, err
	}
	n, err := mr.length()
	if err != nil {
		return 0, nil, err
	}
	if err := mr.fill(n + 1); err != nil {
		return 0, nil, err
	}
	msg = mr.buf[mr.start : mr.start+n+1]
	mr.start += n + 1
	return msg[0], msg, nil
}

// length returns the buffered header's message length (the length word's
// value), or the framing error it is.
func (mr *msgReader) length() (int, error) {
	n := int(binary.BigEndian.Uint32(mr.buf[mr.start+1:]))
	if n < 4 {
		return 0, fmt.Errorf("%w %d", errInvalidLength, n)
	}
	if n+1 > mr.maxLen {
		return 0, fmt.Errorf("%w: %d bytes", errMessageTooLarge, n+1)
	}
	return n, nil
}

// ready reports whether Next can return a message without reading the
// stream, or the framing error Next would return. With readOnce it frames
// messages for the event loop, which reads only when the socket is ready.
func (mr *msgReader) ready() (bool, error) {
	if mr.end-mr.start < 5 {
		return false, nil
	}
	n, err := mr.length()
	return err == nil && mr.end-mr.start >= n+1, err
}

// readOnce reads from the stream once, into room made for the message
// being received: the event loop's reader never blocks.
func (mr *msgReader) readOnce() error {
	if mr.start == mr.end {
		mr.start, mr.end = 0, 0
	}
	if mr.start > 0 && len(mr.buf)-mr.end < len(mr.buf)/4 {
		copy(mr.buf, mr.buf[mr.start:mr.end])
		mr.end -= mr.start
		mr.start = 0
	}
	if mr.end == len(mr.buf) {
		// A message larger than the buffer, whose header ready checked
		// against maxLen: grow as it arrives, as fill does.
		grown := make([]byte, 2*len(mr.buf))
		copy(grown, mr.buf[:mr.end])
		mr.buf = grown
	}
	k, err := mr.r.Read(mr.buf[mr.end:])
	mr.end += k
	return err
}

// NextStartup returns the next untyped startup-phase message (StartupMessage,
// SSLRequest, GSSENCRequest, CancelRequest) without its length word.
// PostgreSQL refuses startup packets over 10,000 bytes (length word excluded).
func (mr *msgReader) NextStartup() ([]byte, error) {
	if err := mr.fill(4); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(mr.buf[mr.start:]))
	if n < 8 || n-4 > 10000 {
		return nil, fmt.Errorf("%w: startup packet length %d", errInvalidLength, n)
	}
	if err := mr.fill(n); err != nil {
		return nil, err
	}
	body := mr.buf[mr.start+4 : mr.start+n]
	mr.start += n
	return body, nil
}

// Buffered is the number of bytes read from the stream but not yet returned.
func (mr *msgReader) Buffered() int { return mr.end - mr.start }

// HasMessage reports whether Next can return without reading the stream: a
// whole message (or a framing error) is buffered. The relay flushes its
// output when it has not, so that a pipeline goes on in one write but a
// stream of rows is never held back waiting for more input.
func (mr *msgReader) HasMessage() bool {
	if mr.end-mr.start < 5 {
		return false
	}
	n := int(binary.BigEndian.Uint32(mr.buf[mr.start+1:]))
	return mr.end-mr.start >= n+1
}

// flushSize bounds what the relay buffers before it writes even though more
// input is already waiting: large results and COPY streams go through in
// pieces of this size instead of accumulating.
const flushSize = 64 << 10

// maxServerMessage is the largest message accepted from the server: the
// server is trusted, and PostgreSQL's own limit is 1 GiB.
const maxServerMessage = 1<<30 + 5

// fill makes at least n unread bytes available, growing the buffer if needed.
func (mr *msgReader) fill(n int) error {
	if mr.end-mr.start >= n {
		return nil
	}
	if mr.start == mr.end {
		// Nothing unread (the usual case between round trips): read into
		// the whole buffer again rather than into its shrinking tail, which
		// would split a large reply into more reads and later cost a copy.
		mr.start, mr.end = 0, 0
	}
	if mr.start > 0 && mr.start+n > len(mr.buf) {
		copy(mr.buf, mr.buf[mr.start:mr.end])
		mr.end -= mr.start
		mr.start = 0
	}
	for mr.end-mr.start < n {
		if mr.end == len(mr.buf) {
			// Here start is 0 (see above). Grow as the bytes arrive, at
			// most doubling, not to the length a header claims: a 5-byte
			// header must not make pgmoat allocate max_message_size for
			// a client that sends nothing more (before it logs in, too).
			grown := make([]byte, min(n, 2*len(mr.buf)))
			copy(grown, mr.buf[:mr.end])
			mr.buf = grown
		}
		k, err := mr.r.Read(mr.buf[mr.end:])
		mr.end += k
		if err != nil {
			if err == io.EOF && mr.end-mr.start > 0 && mr.end-mr.start < n {
				return io.ErrUnexpectedEOF
			}
			if mr.end-mr.start >= n {
				return nil
			}
			return err
		}
	}
	return nil
}

// shrink drops a buffer that grew for one large message, so that an idle
// connection does not keep it.
func (mr *msgReader) shrink() {
	if len(mr.buf) > 64<<10 && mr.end == mr.start {
		mr.buf = make([]byte, 8192)
		mr.start, mr.end = 0, 0
	}
}

// msgWriter buffers outgoing messages; Flush writes them in one call. It is
// not safe for concurrent use.
type msgWriter struct {
	w   io.Writer
	buf []byte
}

func newMsgWriter(w io.Writer) *msgWriter {
	return &msgWriter{w: w, buf: make([]byte, 0, 8192)}
}

// Raw appends already framed bytes.
func (mw *msgWriter) Raw(msg []byte) { mw.buf = append(mw.buf, msg...) }

// Send appends an encoded message.
func (mw *msgWriter) Send(msg interface{ Encode([]byte) ([]byte, error) }) error {
	b, err := msg.Encode(mw.buf)
	if err != nil {
		return fmt.Errorf("encode %T: %w", msg, err)
	}
	mw.buf = b
	return nil
}

// Len is the number of buffered bytes.
func (mw *msgWriter) Len() int { return len(mw.buf) }

// FlushWith writes everything buffered followed by b, in one write. With
// nothing buffered (the relay's case) b is written as it is, without being
// copied into the buffer first. b is not retained.
func (mw *msgWriter) FlushWith(b []byte) error {
	if len(mw.buf) > 0 {
		mw.Raw(b)
		return mw.Flush()
	}
	if len(b) == 0 {
		return nil
	}
	_, err := mw.w.Write(b)
	return err
}

// Flush writes everything buffered.
func (mw *msgWriter) Flush() error {
	if len(mw.buf) == 0 {
		return nil
	}
	_, err := mw.w.Write(mw.buf)
	if cap(mw.buf) > 4*flushSize {
		mw.buf = make([]byte, 0, 8192)
	} else {
		mw.buf = mw.buf[:0]
	}
	return err
}
