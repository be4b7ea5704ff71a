package proxy

import (
	"fmt"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"github.com/pgmoat/pgmoat/config"
)

// liveConfig is what a reload swaps: the configuration and the
// authenticator built from its users. Both are immutable.
type liveConfig struct {
	cfg  *config.Config
	auth Authenticator
}

// live is the current configuration: what new sessions start with, and the
// limits and policy mode every session follows.
func (s *Server) live() *liveConfig { return s.cur.Load() }

// Reload makes cfg and auth the running configuration. New sessions
// authenticate with auth and follow cfg's limits; every session, open or new,
// follows cfg.Policy.Mode from its next statement. Keys that need a restart
// (config.NeedsRestart) are not read from cfg: the caller passes a Config
// built with config.ApplyReload and says so in its log.
//
// An open session whose user is no longer in cfg.Users, or whose tenant,
// read_only or admin flag or credentials changed, is closed at its next
// transaction boundary: when the server has answered everything the client
// sent and no transaction is open, the client gets FATAL 57P01 and the
// connection closes. A session inside a transaction finishes it first.
// Reload returns the number of sessions it marked so.
//
// A cfg that fails validation is refused with the validation error, and the
// running configuration stays.
func (s *Server) Reload(cfg *config.Config, auth Authenticator) (revoked int, err error) {
	if err := cfg.Validate(); err != nil {
		return 0, fmt.Errorf("reload refused: %w", err)
	}
	next := &liveConfig{cfg: cfg, auth: auth}
	// Store before locking: a session registering concurrently either is
	// in the map below or sees next in register.
	s.cur.Store(next)
	s.sessionsMu.Lock()
	defer s.sessionsMu.Unlock()
	for c := range s.sessions {
		if c.stale(next) && c.revoke(c.userChanged()) {
			revoked++
		}
	}
	return revoked, nil
}

// EndTenantSessions ends every open tenant (not admin) session now, inside
// a transaction or not, telling the client why (57P01); a running
// statement is cancelled upstream. It is for a change that makes what an
// open session may already have done unsafe from its next statement on,
// such as a policy starting to read a setting the session may have set.
// It returns the number of sessions it ended.
func (s *Server) EndTenantSessions(why string) (ended int) {
	s.sessionsMu.Lock()
	defer s.sessionsMu.Unlock()
	for c := range s.sessions {
		if c.id.Admin {
			continue
		}
		c.reload.why.CompareAndSwap(nil, &why)
		c.reload.revoked.Store(true)
		c.reads.stop(c.revokedError())
		ended++
	}
	return ended
}

// register adds an authenticated session to those a reload may revoke.
// Each register needs an unregister.
func (s *Server) register(c *session) {
	s.sessionsMu.Lock()
	s.sessions[c] = struct{}{}
	s.sessionsMu.Unlock()
	// A reload between the session's start and now did not see it.
	if cur := s.live(); cur != c.reload.started && c.stale(cur) {
		c.revoke(c.userChanged())
	}
}

func (s *Server) unregister(c *session) {
	s.sessionsMu.Lock()
	delete(s.sessions, c)
	s.sessionsMu.Unlock()
}

// sessionReload is a session's part in configuration reloads.
type sessionReload struct {
	started *liveConfig // the configuration the session authenticated with
	// revoked: the session is to end, at its next transaction boundary
	// (revoke) or at once (EndTenantSessions), for the reason in why (set
	// first).
	revoked atomic.Bool
	why     atomic.Pointer[string]
}

// stale reports whether next no longer has the user the session
// authenticated as, with the same tenant, flags and credentials.
func (c *session) stale(next *liveConfig) bool {
	old, ok1 := findUser(c.reload.started.cfg.Users, c.id.User)
	cur, ok2 := findUser(next.cfg.Users, c.id.User)
	if !ok1 || !ok2 {
		return true
	}
	// The file a password came from does not matter, only the password;
	// nor does spelling the default method out.
	old.PasswordFile, cur.PasswordFile = "", ""
	old.Auth, cur.Auth = old.AuthMethod(), cur.AuthMethod()
	return !reflect.DeepEqual(old, cur)
}

func findUser(users []config.User, name string) (config.User, bool) {
	i := slices.IndexFunc(users, func(u config.User) bool { return u.Name == name })
	if i < 0 {
		return config.User{}, false
	}
	return users[i], true
}

// revoke marks the session to end at its next transaction boundary, and
// ends it now if it is there; why is for the client and the log. It reports
// false if it was already marked.
func (c *session) revoke(why string) bool {
	c.reload.why.CompareAndSwap(nil, &why)
	if !c.reload.revoked.CompareAndSwap(false, true) {
		return false
	}
	c.log.Info("closing the session at its next transaction boundary", "reason", *c.reload.why.Load())
	c.closeIfRevoked()
	// A client that keeps its transaction open does not keep its revoked
	// identity: it ends at the drain deadline, as at shutdown.
	grace := c.srv.live().cfg.Limits.ShutdownTimeout
	time.AfterFunc(grace, func() { c.reads.stop(c.revokedError()) })
	return true
}

// closeIfRevoked ends a revoked session that is at a transaction boundary:
// the client's pending (or next) read fails with a timeout, and
// clientToServer returns revokedError. The server relay calls it after each
// flush, revoke when it marks the session.
func (c *session) closeIfRevoked() {
	if c.reload.revoked.Load() {
		c.reads.stopIf(c.revokedError(), c.idle)
	}
}

// userChanged is why a reload revokes a session whose user changed.
func (c *session) userChanged() string {
	return fmt.Sprintf("pgmoat configuration reload removed or changed user %q", c.id.User)
}

// revokedError is what a revoked session's client is told: PostgreSQL's
// SQLSTATE for a connection terminated by an administrator.
func (c *session) revokedError() error {
	why := "pgmoat revoked the session"
	if p := c.reload.why.Load(); p != nil {
		why = *p
	}
	return &clientError{
		code:    "57P01",
		message: "terminating connection due to administrator command: " + why,
		result:  ResultOK,
	}
}
