package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Connector opens server connections for sessions. It is the one seam
// between a client session and its server connection, so that a pool can
// later hand out a connection per transaction instead.
type Connector interface {
	Connect(ctx context.Context, params map[string]string) (*ServerConn, error)
}

// ServerConn is an authenticated upstream connection, hijacked from pgconn
// so that pgmoat relays raw protocol messages on it. The session owns it.
type ServerConn struct {
	net.Conn
	PID       uint32
	SecretKey []byte
	// Params are the ParameterStatus values the server reported at startup.
	Params map[string]string
	cancel cancelTarget
	r      io.Reader // pgconn's reader of Conn: see Connect
}

// Read reads from the server through pgconn's reader (see Connect), or
// from Conn if the ServerConn did not come from pgconn.
func (s *ServerConn) Read(b []byte) (int, error) {
	if s.r == nil {
		return s.Conn.Read(b)
	}
	return s.r.Read(b)
}

// detachable reports whether the connection's socket may be read directly,
// bypassing Read: a plain socket (not TLS) whose pgconn reader holds nothing
// and reads nothing in the background.
func (s *ServerConn) detachable() bool {
	if _, ok := s.Conn.(syscall.Conn); !ok {
		return false
	}
	if s.r == nil {
		return true
	}
	// pgconn's reader (internal/bgreader) reports 0 when stopped; Connect
	// checked that its frontend buffers nothing.
	bg, ok := s.r.(interface{ Status() int32 })
	return ok && bg.Status() == 0
}

// cancelTarget is where a CancelRequest for this connection goes.
type cancelTarget struct {
	network, addr string
	pid           uint32
	key           []byte
}

// PgConnector connects with pgconn (which speaks SCRAM, md5 and TLS as the
// DSN says) and hijacks the connection.
type PgConnector struct {
	cfg     *pgconn.Config
	timeout time.Duration
}

// NewPgConnector parses the upstream DSN. password, if not empty, overrides
// the DSN's.
func NewPgConnector(dsn, password string, timeout time.Duration) (*PgConnector, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("upstream dsn: %w", err)
	}
	if password != "" {
		cfg.Password = password
	}
	return &PgConnector{cfg: cfg, timeout: timeout}, nil
}

// Database is the database pgmoat connects to.
func (c *PgConnector) Database() string { return c.cfg.Database }

// parserParams are set on every server connection, overriding the role's
// and the database's defaults: with them the server reads a query text
// exactly as pgmoat's parser does. (With standard_conforming_strings off,
// 'a\' ends a string later for the server than for the parser, so the
// server would run statements the policy never saw.) Clients cannot change
// them: the policy refuses SET of either.
var parserParams = map[string]string{
	"standard_conforming_strings": "on",
	"client_encoding":             "UTF8",
}

// Connect opens a connection with the given startup parameters added to the
// DSN's runtime parameters.
func (c *PgConnector) Connect(ctx context.Context, params map[string]string) (*ServerConn, error) {
	cfg := c.cfg.Copy()
	cfg.RuntimeParams = maps.Clone(cfg.RuntimeParams)
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	maps.Copy(cfg.RuntimeParams, params)
	maps.Copy(cfg.RuntimeParams, parserParams)
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	// pgconn reads the socket through a reader of its own: while one of its
	// writes is slow (a loaded machine), it reads in the background, and
	// such a read may still be waiting on the socket after the login. Read
	// directly, the relay would lose what that read gets (the server's
	// first reply: the session would hang); read through that reader, it
	// gets everything in order.
	var reader io.Reader
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		reader = r
		return pgproto3.NewFrontend(r, w)
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect upstream: %w", err)
	}
	h, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("hijack upstream connection: %w", err)
	}
	if n := h.Frontend.ReadBufferLen(); n > 0 {
		h.Conn.Close()
		return nil, fmt.Errorf("upstream sent %d unexpected bytes after the login", n)
	}
	for k, want := range parserParams {
		if got := h.ParameterStatuses[k]; got != want {
			h.Conn.Close()
			return nil, fmt.Errorf("upstream session has %s = %q, want %q", k, got, want)
		}
	}
	return &ServerConn{
		Conn:      h.Conn,
		r:         reader,
		PID:       h.PID,
		SecretKey: h.SecretKey,
		Params:    h.ParameterStatuses,
		cancel: cancelTarget{
			network: h.Conn.RemoteAddr().Network(),
			addr:    h.Conn.RemoteAddr().String(),
			pid:     h.PID,
			key:     h.SecretKey,
		},
	}, nil
}

// Cancel asks the server to cancel the query running on this connection, on
// a new connection as the protocol requires.
func (t cancelTarget) Cancel(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, t.network, t.addr)
	if err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	b := make([]byte, 0, 12+len(t.key))
	b = binary.BigEndian.AppendUint32(b, uint32(12+len(t.key)))
	b = binary.BigEndian.AppendUint32(b, cancelRequestCode)
	b = binary.BigEndian.AppendUint32(b, t.pid)
	b = append(b, t.key...)
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	// The server closes the connection when it is done; wait for that so
	// the cancel has been processed when we return.
	var one [1]byte
	conn.Read(one[:])
	return nil
}

// Open connects without hijacking, for pgmoat's own queries (the catalog).
func (c *PgConnector) Open(ctx context.Context) (*pgconn.PgConn, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	pc, err := pgconn.ConnectConfig(ctx, c.cfg)
	if err != nil {
		return nil, fmt.Errorf("connect upstream: %w", err)
	}
	return pc, nil
}
