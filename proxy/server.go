// Package proxy is pgmoat's network side: the listener, client sessions
// (startup, authentication, upstream connection, relay), cancel requests,
// metrics and the HTTP endpoints. It never inspects SQL itself: it asks
// package policy for decisions and package rewrite what to send.
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
)

// Options wires a Server. Every field is required unless it says otherwise.
type Options struct {
	// Config is the configuration at startup. Server.Reload replaces it
	// for the keys that can change while running (config.NeedsRestart);
	// the rest (TLS, the tenant setting) are read from here.
	Config    *config.Config
	Logger    *slog.Logger
	Audit     *AuditLog // one JSON line per blocked, audited or admin statement and per auth failure
	Metrics   *Metrics
	Auth      Authenticator // the authenticator at startup; Server.Reload replaces it
	Connector Connector
	Engine    func() *policy.Engine // the current policy (swapped on catalog refresh)
	Database  string                // the only database name clients may ask for
	// TLS, if not nil, is offered to clients that send SSLRequest.
	// Optional: nil means plaintext only.
	TLS *tls.Config
}

// Server accepts client connections and runs a session for each.
type Server struct {
	opts    Options
	cur     atomic.Pointer[liveConfig] // the running configuration (reload.go)
	cancels *cancelKeys
	wg      sync.WaitGroup
	active  atomic.Int64

	tenantsMu sync.Mutex
	tenants   map[string]int // open sessions by tenant, for limits.max_tenant_connections

	sessionsMu sync.Mutex
	sessions   map[*session]struct{} // authenticated sessions, for Reload

	hurried atomic.Bool // Hurry was called: the shutdown is fast
}

func NewServer(o Options) *Server {
	s := &Server{opts: o, cancels: newCancelKeys(), tenants: map[string]int{}, sessions: map[*session]struct{}{}}
	s.cur.Store(&liveConfig{cfg: o.Config, auth: o.Auth})
	return s
}

// acquireTenant counts a session of tenant, or reports false if the tenant
// is at limits.max_tenant_connections. Each true needs a releaseTenant.
func (s *Server) acquireTenant(tenant string) bool {
	s.tenantsMu.Lock()
	defer s.tenantsMu.Unlock()
	if max := s.live().cfg.Limits.MaxTenantConnections; max > 0 && s.tenants[tenant] >= max {
		return false
	}
	s.tenants[tenant]++
	return true
}

func (s *Server) releaseTenant(tenant string) {
	s.tenantsMu.Lock()
	defer s.tenantsMu.Unlock()
	if s.tenants[tenant]--; s.tenants[tenant] <= 0 {
		delete(s.tenants, tenant)
	}
}

// ErrFastShutdown, as the cause of the cancellation of Serve's context
// (context.WithCancelCause), asks for a fast shutdown: like PostgreSQL's,
// every session ends at once, its open transaction rolled back and a
// statement it has running on the server cancelled, and its client gets
// FATAL 57P01. A context cancelled for any other cause shuts down gracefully.
var ErrFastShutdown = errors.New("fast shutdown")

// cancelTimeout bounds the cancel request a session sends upstream when
// pgmoat ends it mid-statement; a shutdown waits for it, and for the
// sessions' final errors (a second each, plus slack), past the grace.
const cancelTimeout = 2 * time.Second

// Hurry turns a graceful shutdown under way into a fast one (a second
// signal after SIGTERM): every session ends now, as with ErrFastShutdown.
func (s *Server) Hurry() {
	s.hurried.Store(true) // for sessions that register from now on
	s.sessionsMu.Lock()
	defer s.sessionsMu.Unlock()
	for c := range s.sessions {
		c.reads.stop(errShutdown)
	}
}

// shutdownGrace is how long sessions may finish their transactions once ctx,
// Serve's context, is done: limits.shutdown_timeout, or zero for a fast
// shutdown.
func (s *Server) shutdownGrace(ctx context.Context) time.Duration {
	if errors.Is(context.Cause(ctx), ErrFastShutdown) || s.hurried.Load() {
		return 0
	}
	return s.live().cfg.Limits.ShutdownTimeout
}

// Serve accepts connections on ln until ctx is cancelled. Then it stops
// accepting, lets each session finish its transaction up to
// limits.shutdown_timeout (not at all if ctx's cause is ErrFastShutdown),
// closes the rest, and returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors or memory, or a connection that
			// failed before it was accepted: the listener itself is
			// fine. Back off rather than take every session down.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.opts.Logger.Warn("accept", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.wg.Add(1)
		go s.handle(ctx, conn)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.shutdownGrace(ctx) + cancelTimeout + 1500*time.Millisecond):
		s.opts.Logger.Warn("sessions still open after the shutdown deadline")
	}
	return nil
}

// handle runs one session and accounts for it.
func (s *Server) handle(ctx context.Context, conn net.Conn) {
	defer s.wg.Done()
	defer conn.Close()
	m := s.opts.Metrics
	m.ClientConnected()
	live := s.live()
	c := &session{
		srv:  s,
		conn: conn,
		log:  s.opts.Logger.With("client", conn.RemoteAddr().String()),
		cr:   newMsgReader(conn, live.cfg.Limits.MaxMessageSize),
		cw:   newMsgWriter(conn),
	}
	c.reload.started = live
	var err error
	if n := s.active.Add(1); n > int64(live.cfg.Limits.MaxClientConnections) {
		err = c.refuse(&clientError{code: "53300", message: "sorry, too many clients already", result: ResultRefused})
	} else {
		err = c.run(ctx)
	}
	s.active.Add(-1)
	result := resultOf(err)
	m.ClientDisconnected(result)
	switch {
	case err == nil:
		c.log.Debug("session ended", "result", result)
	case result == ResultOK || result == ResultAuthFailed || errors.Is(err, errIncompleteStartup):
		c.log.Debug("session ended", "result", result, "err", err)
	default:
		c.log.Warn("session ended", "result", result, "err", err)
	}
}

// randomMarker identifies a session's own failing statement: a client cannot
// forge the error it produces without knowing it.
func randomMarker() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
