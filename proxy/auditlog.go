package proxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
)

// Audit events: the closed set of values of an audit line's "event" field.
// The statement events are the Decision* values they are counted under.
const (
	AuditBlocked    = DecisionBlocked // a statement the policy refused
	AuditAudited    = DecisionAudited // a violation let through in audit mode
	AuditAdmin      = DecisionAdmin   // a statement of an admin identity
	AuditAuthFailed = "auth_failed"   // a failed client authentication
)

// AuditLog writes pgmoat's audit log: one JSON object per line for every
// statement the policy blocks, every violation let through in audit mode,
// every statement an admin runs and every failed authentication. Each line
// has the fields
//
//	time, level, msg     slog's; level is WARN for blocks and failed logins, INFO otherwise
//	log                  always "audit"
//	event                blocked, audited, admin or auth_failed
//	tenant, user, client the session (tenant is "" for admins and failed logins)
//	reason               policy.Reason of a violation, AuthReason* of a failed login
//	object               the relation, function or setting a violation names ("" if none)
//	sqlstate, message    the error the client got (violations)
//	fingerprint          pg_query's fingerprint of the whole text; "" if it does not parse
//	statement            the text, literals replaced by $n if redact_literals,
//	                     cut to statement_max_length bytes
//	truncated            true, only when the text was cut
//
// Every event is written whatever the process log level. An AuditLog is safe
// for concurrent use. The statement methods parse the text (fingerprint,
// normalize): they are meant for rare events, not the allowed path.
type AuditLog struct {
	log    *slog.Logger
	maxLen int        // bytes of statement text kept; 0 keeps none
	redact bool       // log the normalized text
	file   *auditFile // nil when writing to stderr
}

// auditFile is the audit log's file. Reopen swaps it for a file opened
// again at the same path, so that a log rotator can move the old one away
// and signal pgmoat (SIGHUP).
type auditFile struct {
	path   string
	mu     sync.Mutex // guards f and closed
	f      *os.File
	closed bool
}

func openAuditFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log.audit_file: %w", err)
	}
	return f, nil
}

func (w *auditFile) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.f.Write(p)
}

// NewAuditLog writes the audit log to w, with the statement settings of
// cfg (AuditFile is ignored). Each line is written with one Write call.
func NewAuditLog(w io.Writer, cfg config.Log) *AuditLog {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})
	return &AuditLog{
		log:    slog.New(h).With("log", "audit"),
		maxLen: cfg.StatementMaxLength,
		redact: cfg.RedactLiterals,
	}
}

// OpenAuditLog returns the audit log cfg asks for: appended to the file
// cfg.AuditFile (created with mode 0600 if missing), or written to stderr
// if AuditFile is empty. Close closes the file.
func OpenAuditLog(cfg config.Log, stderr io.Writer) (*AuditLog, error) {
	if cfg.AuditFile == "" {
		return NewAuditLog(stderr, cfg), nil
	}
	f, err := openAuditFile(cfg.AuditFile)
	if err != nil {
		return nil, err
	}
	w := &auditFile{path: cfg.AuditFile, f: f}
	a := NewAuditLog(w, cfg)
	a.file = w
	return a, nil
}

// Reopen opens the audit file again at its path (creating it if a log
// rotator moved it away) and writes there from now on. If that fails, the
// log goes on in the file it had. Without a file it does nothing.
func (a *AuditLog) Reopen() error {
	if a.file == nil {
		return nil
	}
	a.file.mu.Lock()
	defer a.file.mu.Unlock()
	if a.file.closed {
		return nil // a SIGHUP during exit
	}
	f, err := openAuditFile(a.file.path)
	if err != nil {
		return err
	}
	old := a.file.f
	a.file.f = f
	return old.Close()
}

// Close closes the audit file, if OpenAuditLog opened one. Events logged
// after Close are lost.
func (a *AuditLog) Close() error {
	if a.file == nil {
		return nil
	}
	a.file.mu.Lock()
	defer a.file.mu.Unlock()
	a.file.closed = true
	return a.file.f.Close()
}

// AuditSession identifies the session an audit line is about.
type AuditSession struct {
	Tenant string // "" for an admin
	User   string
	Client string // the client's address, host:port
}

// Violation logs a statement that violates the policy: decision is
// DecisionBlocked if it was refused, DecisionAudited if audit mode let it
// run. sql is the whole query text the violation was found in.
func (a *AuditLog) Violation(s AuditSession, decision string, v *policy.Violation, sql string) {
	level, msg := slog.LevelWarn, "statement blocked"
	if decision == DecisionAudited {
		level, msg = slog.LevelInfo, "statement audited (audit mode let it run)"
	}
	message := v.Message
	if a.redact && v.Reason == policy.ReasonParseError {
		message = "" // the parser quotes the text near the error
	}
	attrs := []slog.Attr{
		slog.String("event", decision),
		slog.String("tenant", s.Tenant),
		slog.String("user", s.User),
		slog.String("client", s.Client),
		slog.String("reason", string(v.Reason)),
		slog.String("object", v.Object),
		slog.String("sqlstate", v.SQLState),
		slog.String("message", message),
	}
	a.log.LogAttrs(context.Background(), level, msg, a.statement(attrs, sql)...)
}

// Admin logs a statement run by an admin identity, which bypasses the
// policy.
func (a *AuditLog) Admin(s AuditSession, sql string) {
	attrs := []slog.Attr{
		slog.String("event", AuditAdmin),
		slog.String("tenant", s.Tenant),
		slog.String("user", s.User),
		slog.String("client", s.Client),
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "admin statement", a.statement(attrs, sql)...)
}

// AuthFailed logs a failed authentication of user (the name the client
// gave); reason is an AuthReason* constant.
func (a *AuditLog) AuthFailed(user, client, reason string) {
	a.log.LogAttrs(context.Background(), slog.LevelWarn, "authentication failed",
		slog.String("event", AuditAuthFailed),
		slog.String("tenant", ""),
		slog.String("user", user),
		slog.String("client", client),
		slog.String("reason", reason),
	)
}

// statement appends the fingerprint and the (redacted, truncated) text of
// sql to attrs.
func (a *AuditLog) statement(attrs []slog.Attr, sql string) []slog.Attr {
	attrs = append(attrs, slog.String("fingerprint", policy.Fingerprint(sql)))
	text := sql
	// A statement that sets a password is always redacted: the audit log
	// must not hold secrets (CREATE/ALTER ROLE ... PASSWORD '...').
	if a.redact || containsFold(sql, "password") {
		n, err := policy.Normalize(sql)
		if err != nil {
			// Without a parse tree the literals cannot be told apart.
			n = "<redacted: the text does not parse>"
		}
		text = n
	}
	text, cut := truncateUTF8(text, a.maxLen)
	attrs = append(attrs, slog.String("statement", text))
	if cut {
		attrs = append(attrs, slog.Bool("truncated", true))
	}
	return attrs
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8
// sequence, and reports whether it cut anything.
func truncateUTF8(s string, n int) (string, bool) {
	if len(s) <= n {
		return s, false
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n], true
}

// containsFold reports whether s contains the ASCII word sub in any case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
