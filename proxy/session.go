package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/rewrite"
)

// session is one client connection, from startup to close. Its life reads
// top to bottom in run: startup → authenticate → connect upstream → ready →
// relay.
type session struct {
	srv  *Server
	conn net.Conn // the client connection; its TLS layer once started
	tls  bool
	log  *slog.Logger

	cr  *msgReader
	cwu sync.Mutex // guards cw: the server relay and shutdown both write to the client
	cw  *msgWriter

	id     Identity
	server *ServerConn
	sr     *msgReader
	sw     *msgWriter

	rw        *rewrite.Session // nil for admin sessions: they bypass the policy
	pol       policy.Session
	cancelKey [2]uint32   // the BackendKeyData pgmoat gave the client
	clock     *batchClock // from ready on: statement timing, idle/active state

	reload sessionReload // the configuration it started with; revocation (reload.go)

	// From relay on (idle.go): reads lets shutdown and the idle timeout
	// end the client relay; idleTimer is nil without limits.idle_timeout;
	// admin tracks an admin session's idleness for it.
	reads     *readStop
	idleTimer *idleTimer
	admin     adminState
	// unflushed: the server relay holds replies the client has not been
	// sent yet, so the session is not idle even if its last ReadyForQuery
	// has been seen (ending it then would cut off the end of its results).
	unflushed atomic.Bool

	// onLoop: the relay runs on an event loop (looprelay.go), where
	// decide answers only what it can without parsing; decided is a
	// decision made for it elsewhere, for the message it relays again.
	onLoop  bool
	decided *decision
	// parsing: a client message waits for a decision made off the loop.
	// The session is not idle then: the client sent a statement, which a
	// graceful shutdown or a revocation lets finish.
	parsing atomic.Bool
}

// errParseLater is what session.decide returns on an event loop for a
// text that it could answer only by parsing it.
type errParseLater struct{ sql string }

func (e *errParseLater) Error() string { return "policy decision needs a parse" }

// decision is a policy decision about one text, and how long it took.
type decision struct {
	sql  string
	d    *policy.Decision
	v    *policy.Violation
	took time.Duration
}

// Send and Flush and Next make session an authConn for the authenticator.
func (c *session) Send(msg interface{ Encode([]byte) ([]byte, error) }) error {
	return c.cw.Send(msg)
}
func (c *session) Flush() error                            { return c.cw.Flush() }
func (c *session) Next() (typ byte, msg []byte, err error) { return c.cr.Next() }
func (c *session) Encrypted() bool                         { return c.tls }

// run serves the session and returns why it ended (nil for a clean close).
func (c *session) run(ctx context.Context) error {
	return catch(func() error { return c.serve(ctx) })
}

// catch runs f and turns a panic into its error: a bug that one session
// runs into must not end the others.
func catch(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in session: %v\n%s", r, debug.Stack())
		}
	}()
	return f()
}

func (c *session) serve(ctx context.Context) (err error) {
	o := c.srv.opts
	c.conn.SetDeadline(time.Now().Add(c.reload.started.cfg.Limits.AuthTimeout))
	st, err := c.startup()
	if errors.Is(err, errIncompleteStartup) {
		return err // no reply, as from PostgreSQL (startup.go)
	}
	if err != nil || st == nil { // st == nil: a cancel request, handled
		return c.refuse(err)
	}
	if st.database != "" && st.database != o.Database {
		return c.refuse(&clientError{code: "3D000", message: fmt.Sprintf("database %q does not exist", st.database), result: ResultRefused})
	}
	// PostgreSQL answers a newer minor version or unknown _pq_ options
	// right after the startup message, before authentication.
	if st.minor > 0 || len(st.unrecognized) > 0 {
		if err := c.cw.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.unrecognized}); err != nil {
			return err
		}
	}
	c.id, err = c.reload.started.auth.Authenticate(c, st.user)
	if err != nil {
		var ae *AuthError
		if errors.As(err, &ae) {
			o.Metrics.AuthFailed(ae.Reason)
			o.Audit.AuthFailed(st.user, c.conn.RemoteAddr().String(), ae.Reason)
			return c.refuseAuth(ae)
		}
		return c.refuse(err)
	}
	c.log = c.log.With("user", c.id.User, "tenant", c.id.Tenant)
	if !c.id.Admin {
		if !c.srv.acquireTenant(c.id.Tenant) {
			return c.refuse(&clientError{code: "53300", message: fmt.Sprintf("pgmoat: too many connections for tenant %q", c.id.Tenant), result: ResultRefused})
		}
		defer c.srv.releaseTenant(c.id.Tenant)
	}

	c.server, err = o.Connector.Connect(ctx, st.params)
	if err != nil && ctx.Err() != nil {
		// pgmoat began to shut down while the client logged in.
		return c.refuse(&clientError{code: "57P03", message: "the database system is shutting down", result: ResultRefused, cause: err})
	}
	if err != nil {
		o.Metrics.UpstreamConnectFailed()
		return c.refuse(upstreamLoginError(err))
	}
	o.Metrics.UpstreamConnected()
	defer func() {
		c.server.Close()
		o.Metrics.UpstreamDisconnected()
	}()
	c.sr = newMsgReader(c.server, maxServerMessage)
	c.sw = newMsgWriter(c.server)
	c.conn.SetDeadline(time.Time{})

	if !c.id.Admin {
		c.pol = policy.Session{Tenant: c.id.Tenant, User: c.id.User, ReadOnly: c.id.ReadOnly}
		c.rw = rewrite.NewSession(rewrite.Config{
			Setting:  o.Config.Policy.TenantSetting,
			Tenant:   c.id.Tenant,
			Marker:   randomMarker(),
			OnInject: o.Metrics.Injected,
		})
	} else {
		c.pol = policy.Session{User: c.id.User, Admin: true}
	}
	defer func() {
		if c.cancelKey != [2]uint32{} {
			c.srv.cancels.remove(c.cancelKey[0], c.cancelKey[1])
		}
	}()
	c.reads = newReadStop(c.conn) // before register: a reload may revoke at once
	c.srv.register(c)
	defer c.srv.unregister(c)
	if err := c.ready(); err != nil {
		return err
	}
	var settled func() bool // reports that the server owes no reply
	if c.rw != nil {
		settled = c.rw.Idle
	}
	c.clock = newBatchClock(o.Metrics, settled)
	defer c.clock.close()
	return c.relay(ctx)
}

// startup reads startup packets until a StartupMessage. SSL and GSS
// encryption requests are declined ('N'); a CancelRequest is served and
// returns nil, nil.
func (c *session) startup() (*startup, error) {
	for {
		body, err := c.cr.NextStartup()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				return nil, nil // a port probe, or a client that wanted TLS and got 'N'
			case isFramingError(err):
				return nil, protocolViolation("invalid startup packet: %v", err)
			}
			// Closed, reset or timed out (limits.auth_timeout) before
			// a whole packet arrived.
			return nil, incompleteStartup(err)
		}
		switch code := binary.BigEndian.Uint32(body); code {
		case sslRequestCode, gssEncRequestCode:
			if c.cr.Buffered() > 0 {
				// Bytes sent before the answer could be injected by a
				// man in the middle (CVE-2021-23214): refuse them.
				return nil, protocolViolation("received unencrypted data after SSL request")
			}
			if code == gssEncRequestCode || c.srv.opts.TLS == nil || c.tls {
				if _, err := c.conn.Write([]byte{'N'}); err != nil {
					return nil, err
				}
				continue
			}
			if err := c.startTLS(); err != nil {
				return nil, err
			}
		case cancelRequestCode:
			c.cancel(body)
			return nil, nil
		default:
			if c.srv.opts.Config.TLS.Require && !c.tls {
				return nil, &clientError{code: "28000", message: "pgmoat: TLS is required; connect with sslmode=require or stronger", result: ResultRefused}
			}
			return parseStartup(body)
		}
	}
}

// startTLS accepts the client's SSLRequest and replaces the connection
// with its TLS layer.
func (c *session) startTLS() error {
	if _, err := c.conn.Write([]byte{'S'}); err != nil {
		return err
	}
	tc := tls.Server(c.conn, c.srv.opts.TLS)
	if err := tc.Handshake(); err != nil {
		c.conn.Close() // a plaintext error message would only garble the TLS stream
		return &clientError{code: "08P01", message: "pgmoat: TLS handshake failed", result: ResultProtocolError, cause: err}
	}
	c.conn, c.tls = tc, true
	c.cr = newMsgReader(tc, c.reload.started.cfg.Limits.MaxMessageSize)
	c.cw = newMsgWriter(tc)
	return nil
}

// cancel forwards a CancelRequest whose key pgmoat handed out.
func (c *session) cancel(body []byte) {
	var req pgproto3.CancelRequest
	// Decode expects the request code too; body starts with it.
	if err := req.Decode(body); err != nil {
		return
	}
	t, ok := c.srv.cancels.lookup(req.ProcessID, req.SecretKey)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.Cancel(ctx); err != nil {
		c.log.Warn("forward cancel request", "err", err)
	}
}

// ready tells the client the session is open: the server's parameters,
// pgmoat's own cancel key, ReadyForQuery.
func (c *session) ready() error {
	for k, v := range c.server.Params {
		if err := c.cw.Send(&pgproto3.ParameterStatus{Name: k, Value: v}); err != nil {
			return err
		}
	}
	pid, key := c.srv.cancels.add(c.server.cancel)
	c.cancelKey = [2]uint32{pid, key}
	if err := c.cw.Send(&pgproto3.BackendKeyData{ProcessID: pid, SecretKey: binary.BigEndian.AppendUint32(nil, key)}); err != nil {
		return err
	}
	if err := c.cw.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'}); err != nil {
		return err
	}
	return c.cw.Flush()
}

// refuse sends err as a FATAL error and returns it.
func (c *session) refuse(err error) error {
	if err == nil {
		return nil
	}
	c.cwu.Lock()
	defer c.cwu.Unlock()
	// The deadline that ended the session (limits.auth_timeout) may have
	// passed: allow time to send the final error, not more.
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if c.cw.Send(fatal(err)) == nil && c.cw.Flush() == nil && resultOf(err) == ResultProtocolError {
		linger(c.conn)
	}
	return err
}

// linger lets a client that is still sending (a message over
// limits.max_message_size, a malformed startup packet) read its final
// error: closing a socket with unread input resets the connection, and the
// client's write would fail before it reads the error. It stops sending and
// discards what arrives, for a second at most.
func linger(conn net.Conn) {
	// Not TLS: its CloseWrite sends close_notify under a deadline of its
	// own, which a client that does not read would hold up for seconds.
	if cw, ok := conn.(*net.TCPConn); ok {
		cw.CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(conn, 64<<20))
}

func (c *session) refuseAuth(ae *AuthError) error {
	return c.refuse(&clientError{code: ae.SQLState, message: ae.Message, result: ResultAuthFailed, cause: ae})
}

// relay relays messages both ways until either side or pgmoat ends the
// session, on an event loop where it can, with goroutines otherwise.
func (c *session) relay(ctx context.Context) error {
	c.startIdleTimer()
	defer c.idleTimer.stop()
	stop := context.AfterFunc(ctx, func() { c.shutdown(c.srv.shutdownGrace(ctx)) })
	defer stop()
	var err error
	lr, lerr := c.startLoopRelay()
	if lerr != nil {
		c.log.Warn("relay with goroutines: the event loop failed", "err", lerr)
	}
	if lr != nil {
		err = lr.wait()
		defer c.conn.Close() // the connection wait made
	} else {
		err = c.relayGoroutines()
	}
	if errors.Is(err, errClientClosed) && c.reads.cause() == nil {
		c.hangUpServer() // what the client sent last still runs
	} else {
		c.server.Close() // pgmoat or the server ended it: nothing more runs
	}
	if c.reads.cause() != nil && !c.idle() {
		// pgmoat ended the session (shutdown, revocation) inside a
		// transaction or a statement: cancel what may still run
		// upstream, before a client that does not read can hold up the
		// final error (a shutdown waits only so long).
		c.cancelServer()
	}
	// Time to send the final error, not more.
	c.conn.SetWriteDeadline(time.Now().Add(time.Second))
	switch {
	case errors.Is(err, errClientClosed):
		return nil
	case errors.Is(err, errShutdown):
		return c.refuse(&clientError{code: "57P01", message: "terminating connection due to administrator command", result: ResultOK})
	case errors.Is(err, errIdleTimeout):
		return c.refuse(&clientError{code: "57P05", message: "terminating connection due to idle-session timeout", result: ResultOK})
	case errors.Is(err, errServerClosed):
		return c.refuse(&clientError{code: "08006", message: "pgmoat: the database server closed the connection", result: ResultUpstreamError, cause: err})
	}
	return c.refuse(err)
}

// relayGoroutines runs one goroutine per direction; the first error ends
// both.
func (c *session) relayGoroutines() error {
	errc := make(chan error, 2)
	go func() { errc <- catch(c.clientToServer) }()
	go func() { errc <- catch(c.serverToClient) }()
	err := <-errc
	// Unblock the other direction, whether it waits to read or to write (a
	// client that stops reading blocks the server relay in Write). The
	// server connection stays open for hangUpServer.
	c.server.SetDeadline(time.Now())
	c.conn.SetDeadline(time.Now())
	<-errc
	return err
}

// hangUpServer closes the server connection after the client ended the
// session, as a client does. Closing a socket whose input is unread resets
// the connection, and the server would lose what was relayed but not read
// yet: a statement pipelined before Terminate, or before the client went.
// So it stops writing, and reads and discards until the server closes its
// end, for a second at most. Not over TLS, whose CloseWrite sends
// close_notify under a deadline of its own (as in linger).
func (c *session) hangUpServer() {
	conn := c.server.Conn
	var err error
	switch hc := conn.(type) {
	case *net.TCPConn:
		err = hc.CloseWrite()
	case *net.UnixConn:
		err = hc.CloseWrite()
	default:
		err = errors.ErrUnsupported
	}
	if err == nil {
		conn.SetDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, c.server) // through pgconn's reader, which may hold bytes
	}
	conn.Close()
}

var (
	errClientClosed = errors.New("client closed the connection")
	errServerClosed = errors.New("server closed the connection")
	errShutdown     = errors.New("pgmoat is shutting down")
)

// clientToServer reads client messages, applies the policy and the tenant
// rewrite, and writes upstream; it flushes when no further client message is
// buffered, so a pipeline goes upstream in one write.
func (c *session) clientToServer() error {
	m := c.srv.opts.Metrics
	received := 0 // bytes not counted yet: counted once per upstream write
	defer func() { m.ClientBytesReceived(received) }()
	for {
		typ, msg, err := c.cr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return errClientClosed
			}
			if isFramingError(err) {
				return protocolViolation("pgmoat: %v", err)
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				if cause := c.reads.cause(); cause != nil {
					return cause
				}
				return errShutdown
			}
			return fmt.Errorf("read client: %w", err)
		}
		received += len(msg)
		if err := c.fromClient(typ, msg); err != nil {
			if errors.Is(err, errClientClosed) { // Terminate, which goes on
				c.sw.Flush()
			}
			return err
		}
		if !c.cr.HasMessage() || c.sw.Len() >= flushSize {
			m.ClientBytesReceived(received)
			received = 0
			if err := c.sw.Flush(); err != nil {
				return fmt.Errorf("%w: %v", errServerClosed, err)
			}
			c.cr.shrink()
		}
	}
}

// fromClient relays one client message into c.sw. Terminate goes there
// too, and returns errClientClosed.
func (c *session) fromClient(typ byte, msg []byte) error {
	c.idleTimer.touch()
	if typ == 'X' {
		c.sw.Raw(msg)
		return errClientClosed
	}
	// If stopped while idle, what was read does not start.
	if err := c.reads.gated(func() error { return c.handleClient(typ, msg) }); err != nil {
		return err
	}
	if typ == 'Q' || typ == 'S' || typ == 'F' { // answered by ReadyForQuery
		c.clock.sent(time.Now())
	}
	return nil
}

func (c *session) handleClient(typ byte, msg []byte) error {
	if c.rw == nil { // admin: audited passthrough
		c.admin.client(typ)
		c.auditAdmin(typ, msg)
		c.sw.Raw(msg)
		return nil
	}
	if (typ == 'Q' || typ == 'P' || typ == 'F') && c.rw.Skipping() {
		// Dropped until Sync, as the server would: not judged, counted
		// or audited, since it never runs.
		return nil
	}
	switch typ {
	case 'Q':
		text, err := rewrite.QueryText(msg)
		if err != nil {
			return protocolViolation("invalid Query message")
		}
		sql := string(text)
		d, v, err := c.check(sql)
		if err != nil {
			return err
		}
		c.sw.buf = c.rw.Query(c.sw.buf, msg, sql, d, v)
	case 'P':
		name, text, err := rewrite.ParseFields(msg)
		if err != nil {
			return protocolViolation("invalid Parse message")
		}
		sql := string(text)
		d, v, err := c.check(sql)
		if err != nil {
			return err
		}
		c.sw.buf = c.rw.Parse(c.sw.buf, msg, string(name), d, v)
	case 'F':
		v := &policy.Violation{
			Reason:   policy.ReasonFunction,
			Message:  "pgmoat: the FunctionCall protocol message is not allowed: call functions with SQL",
			SQLState: "42501",
			Pos:      -1,
		}
		// Refused in audit mode too: a FunctionCall cannot carry the
		// tenant setting, so it would run without it.
		c.record(v, "<FunctionCall>", DecisionBlocked)
		c.sw.buf = c.rw.FunctionCall(c.sw.buf, msg, v)
	default:
		var err error
		if c.sw.buf, err = c.rw.Message(c.sw.buf, msg); err != nil {
			return protocolViolation("invalid %q message: %v", typ, err)
		}
	}
	return nil
}

// check asks the policy about sql and returns the violation to enforce.
func (c *session) check(sql string) (*policy.Decision, *policy.Violation, error) {
	o := c.srv.opts
	d, v, err := c.decide(sql)
	if err != nil {
		return nil, nil, err
	}
	if v != nil {
		enforced := c.enforce(d, v, sql)
		if enforced != v && len(d.TempQualify) > 0 {
			// Audit mode runs (part of) the text as the client wrote it:
			// a name that is not a temporary table of the session must
			// reach whatever the server resolves it to, not fail as
			// pg_temp.x.
			plain := *d
			plain.TempQualify = nil
			d = &plain
		}
		return d, enforced, nil
	}
	o.Metrics.Statement(DecisionAllowed)
	for _, t := range d.CreatesTemp {
		if c.pol.TempTables == nil {
			c.pol.TempTables = map[string]struct{}{}
		}
		c.pol.TempTables[t] = struct{}{}
	}
	return d, nil, nil
}

// decide asks the policy about sql. On an event loop it answers only what
// needs no parse: otherwise it returns *errParseLater, and the loop has the
// decision made elsewhere and relays the message again, when decided holds
// it.
func (c *session) decide(sql string) (*policy.Decision, *policy.Violation, error) {
	m := c.srv.opts.Metrics
	if r := c.decided; r != nil && r.sql == sql {
		c.decided = nil
		m.PolicyDecision(r.took)
		return r.d, r.v, nil
	}
	start := time.Now()
	if c.onLoop {
		d, v, ok := c.srv.opts.Engine().Lookup(sql, &c.pol)
		if !ok {
			c.parsing.Store(true) // under the read gate, as idle's callers
			return nil, nil, &errParseLater{sql: sql}
		}
		m.PolicyDecision(time.Since(start))
		return d, v, nil
	}
	d, v := c.srv.opts.Engine().Check(sql, &c.pol)
	m.PolicyDecision(time.Since(start))
	return d, v, nil
}

// enforce counts and audits v, the first violation of the text d decides,
// and returns the violation to enforce: v itself; or in audit mode nil, or
// the first violation of d that audit mode refuses too (d.Blocking), up to
// which the text then runs.
func (c *session) enforce(d *policy.Decision, v *policy.Violation, sql string) *policy.Violation {
	if c.srv.live().cfg.Policy.Mode == config.ModeAudit && v.Reason.Auditable() {
		b := d.Blocking
		if b == nil || b.Stmt > v.Stmt {
			c.record(v, sql, DecisionAudited) // its statement runs
		}
		if b == nil {
			return nil
		}
		v = b
	}
	c.record(v, sql, DecisionBlocked)
	return v
}

// record counts and audits a violation with its decision.
func (c *session) record(v *policy.Violation, sql, decision string) {
	o := c.srv.opts
	o.Metrics.Blocked(c.id.Tenant, string(v.Reason), v.Object)
	o.Metrics.Statement(decision)
	o.Audit.Violation(c.auditSession(), decision, v, sql)
}

func (c *session) auditSession() AuditSession {
	return AuditSession{Tenant: c.id.Tenant, User: c.id.User, Client: c.conn.RemoteAddr().String()}
}

func (c *session) auditAdmin(typ byte, msg []byte) {
	var text []byte
	switch typ {
	case 'Q':
		text, _ = rewrite.QueryText(msg)
	case 'P':
		_, text, _ = rewrite.ParseFields(msg)
	case 'F':
		// A function called by OID: logged as the SQL that names it.
		if len(msg) < 9 {
			return // malformed: the server refuses it
		}
		text = fmt.Appendf(nil, "SELECT %d::pg_catalog.regprocedure /* FunctionCall */", binary.BigEndian.Uint32(msg[5:9]))
	default:
		return
	}
	c.srv.opts.Metrics.Statement(DecisionAdmin)
	c.srv.opts.Audit.Admin(c.auditSession(), string(text))
}

// serverToClient relays server messages through the rewrite filter.
func (c *session) serverToClient() error {
	var out []byte
	for {
		typ, msg, err := c.sr.Next()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return errClientClosed // closed by the other direction
			}
			return fmt.Errorf("%w: %v", errServerClosed, err)
		}
		if out, err = c.fromServer(typ, msg, out); err != nil {
			return err
		}
		if len(out) > 0 && (!c.sr.HasMessage() || len(out) >= flushSize) {
			c.srv.opts.Metrics.ClientBytesSent(len(out))
			c.cwu.Lock()
			err := c.cw.FlushWith(out)
			c.cwu.Unlock()
			out = out[:0]
			if cap(out) > 4*flushSize {
				out = nil
			}
			if err != nil {
				return errClientClosed
			}
			c.sr.shrink()
		}
		if len(out) == 0 {
			c.unflushed.Store(false)
			c.closeIfRevoked()
		}
	}
}

// fromServer relays one server message: out with what the client is owed
// of it appended.
func (c *session) fromServer(typ byte, msg, out []byte) ([]byte, error) {
	if typ == 'Z' { // idleness starts here: before rw or admin records it
		c.idleTimer.touch()
	}
	c.unflushed.Store(true) // before Reply can make the session idle
	if c.rw == nil {
		out = append(out, msg...)
		c.admin.server(msg)
	} else {
		var err error
		if out, err = c.rw.Reply(out, msg); err != nil {
			// The detail is for the log; the client did nothing wrong.
			return out, &clientError{code: "08006", message: "pgmoat: unexpected reply from the database server", result: ResultUpstreamError, cause: err}
		}
	}
	if typ == 'Z' { // relayed to the client in any case
		c.clock.answered()
	}
	return out, nil
}

// shutdown ends the session for a server shutdown: the client's next read
// deadline fires. Sessions in a transaction (admin sessions too) get grace
// to finish it; with no grace (a fast shutdown) every session ends at once.
func (c *session) shutdown(grace time.Duration) {
	if grace <= 0 {
		c.reads.stop(errShutdown)
		return
	}
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		deadline := time.After(grace)
		for {
			if c.reads.stopIf(errShutdown, c.idle); c.reads.cause() != nil {
				return
			}
			select {
			case <-t.C:
			case <-deadline:
				c.reads.stop(errShutdown)
				return
			}
		}
	}()
}

// cancelServer sends the server a CancelRequest for the session's
// connection, which pgmoat has closed. Closing alone would not stop a
// running statement: PostgreSQL notices a client is gone only when it next
// reads from or writes to it, so a long statement would keep running, and
// holding its transaction's locks, until it ends on its own.
func (c *session) cancelServer() {
	ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
	defer cancel()
	if err := c.server.cancel.Cancel(ctx); err != nil {
		c.log.Warn("cancel the statement of a closed session", "err", err)
	}
}
