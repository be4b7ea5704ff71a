package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
)

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of sessions.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines decodes every line written so far, failing the test on a line that
// is not one JSON object.
func (b *lockedBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	data := bytes.Clone(b.buf.Bytes())
	b.mu.Unlock()
	return jsonLines(t, data)
}

func jsonLines(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("audit line is not a JSON object: %v\n%s", err, sc.Bytes())
		}
		out = append(out, m)
	}
	return out
}

func auditConfig(maxLen int, redact bool) config.Log {
	return config.Log{StatementMaxLength: maxLen, RedactLiterals: redact}
}

// wantFields checks the fields of one audit line; a want value of nil means
// the field must be absent.
func wantFields(t *testing.T, line map[string]any, want map[string]any) {
	t.Helper()
	for k, w := range want {
		got, ok := line[k]
		if w == nil {
			if ok {
				t.Errorf("field %s = %v, want it absent", k, got)
			}
			continue
		}
		if !ok || got != w {
			t.Errorf("field %s = %v (present %v), want %v", k, got, ok, w)
		}
	}
}

func TestAuditLogEvents(t *testing.T) {
	sess := AuditSession{Tenant: "acme", User: "acme_app", Client: "10.0.0.7:50432"}
	v := &policy.Violation{Reason: policy.ReasonUnprotectedRelation, Object: "public.audit_raw", Message: "pgmoat: no", SQLState: "42501"}
	const sql = "select * from audit_raw where id = 7"
	fp := policy.Fingerprint(sql)
	if fp == "" {
		t.Fatal("no fingerprint")
	}

	tests := []struct {
		name string
		log  func(a *AuditLog)
		want map[string]any
	}{
		{"blocked", func(a *AuditLog) { a.Violation(sess, DecisionBlocked, v, sql) }, map[string]any{
			"level": "WARN", "msg": "statement blocked", "log": "audit", "event": AuditBlocked,
			"tenant": "acme", "user": "acme_app", "client": "10.0.0.7:50432",
			"reason": string(policy.ReasonUnprotectedRelation), "object": "public.audit_raw", "sqlstate": "42501",
			"message": "pgmoat: no", "fingerprint": fp, "statement": sql, "truncated": nil,
		}},
		{"audited", func(a *AuditLog) { a.Violation(sess, DecisionAudited, v, sql) }, map[string]any{
			"level": "INFO", "log": "audit", "event": AuditAudited, "tenant": "acme",
			"reason": string(policy.ReasonUnprotectedRelation), "fingerprint": fp, "statement": sql,
		}},
		{"admin", func(a *AuditLog) { a.Admin(AuditSession{User: "dba", Client: "[::1]:5000"}, sql) }, map[string]any{
			"level": "INFO", "msg": "admin statement", "log": "audit", "event": AuditAdmin,
			"tenant": "", "user": "dba", "client": "[::1]:5000", "fingerprint": fp, "statement": sql,
			"reason": nil,
		}},
		{"auth failed", func(a *AuditLog) { a.AuthFailed("mallory", "10.0.0.9:1", AuthReasonBadPassword) }, map[string]any{
			"level": "WARN", "msg": "authentication failed", "log": "audit", "event": AuditAuthFailed,
			"tenant": "", "user": "mallory", "client": "10.0.0.9:1", "reason": AuthReasonBadPassword,
			"statement": nil, "fingerprint": nil,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tt.log(NewAuditLog(&buf, auditConfig(1024, false)))
			lines := jsonLines(t, buf.Bytes())
			if len(lines) != 1 {
				t.Fatalf("%d lines, want 1:\n%s", len(lines), buf.Bytes())
			}
			if ts, _ := lines[0]["time"].(string); ts == "" {
				t.Error("no time")
			} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
				t.Errorf("time %q: %v", ts, err)
			}
			wantFields(t, lines[0], tt.want)
		})
	}
}

func TestAuditLogStatementText(t *testing.T) {
	sess := AuditSession{Tenant: "acme", User: "acme_app", Client: "c"}
	long := "select '" + strings.Repeat("x", 50) + "'"
	const secret = "select * from users where password = 'hunter2' and id = 42"
	tests := []struct {
		name      string
		maxLen    int
		redact    bool
		sql       string
		statement string
		truncated bool
	}{
		{"short", 1024, false, "select 1", "select 1", false},
		{"exactly the limit", 8, false, "select 1", "select 1", false},
		{"cut", 10, false, long, long[:10], true},
		{"cut before a multi-byte character", 9, false, "select 'é'", "select '", true},
		{"no text", 0, false, "select 1", "", true},
		{"redacted", 1024, true, secret, "select * from users where password = $1 and id = $2", false},
		{"redacted then cut", 20, true, secret, "select * from users ", true},
		{"redacted, does not parse", 1024, true, "selec 'hunter2'", "<redacted: the text does not parse>", false},
		{"not redacted, does not parse", 1024, false, "selec 'hunter2'", "selec 'hunter2'", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			NewAuditLog(&buf, auditConfig(tt.maxLen, tt.redact)).Admin(sess, tt.sql)
			lines := jsonLines(t, buf.Bytes())
			if len(lines) != 1 {
				t.Fatalf("%d lines, want 1", len(lines))
			}
			want := map[string]any{"statement": tt.statement, "truncated": nil}
			if tt.truncated {
				want["truncated"] = true
			}
			wantFields(t, lines[0], want)
			if tt.redact && strings.Contains(buf.String(), "hunter2") {
				t.Errorf("redacted line contains the literal: %s", buf.Bytes())
			}
		})
	}
}

// A parse error's message quotes the text: redaction drops it too.
func TestAuditLogRedactsParseErrorMessage(t *testing.T) {
	const sql = "selec 'hunter2'"
	v := &policy.Violation{Reason: policy.ReasonParseError, Message: `pgmoat: syntax error at or near "selec 'hunter2'"`, SQLState: "42601"}
	for _, redact := range []bool{false, true} {
		var buf bytes.Buffer
		NewAuditLog(&buf, auditConfig(1024, redact)).Violation(AuditSession{}, DecisionBlocked, v, sql)
		if got := strings.Contains(buf.String(), "hunter2"); got == redact {
			t.Errorf("redact=%v: line contains the literal: %v\n%s", redact, got, buf.Bytes())
		}
		wantFields(t, jsonLines(t, buf.Bytes())[0], map[string]any{"fingerprint": "", "sqlstate": "42601"})
	}
}

func TestOpenAuditLog(t *testing.T) {
	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		if err := os.WriteFile(path, []byte("{\"earlier\":true}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		for _, user := range []string{"a", "b"} { // reopening appends
			a, err := OpenAuditLog(config.Log{AuditFile: path, StatementMaxLength: 100}, &stderr)
			if err != nil {
				t.Fatal(err)
			}
			a.AuthFailed(user, "c", AuthReasonUnknownUser)
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := jsonLines(t, data)
		if len(lines) != 3 || lines[0]["earlier"] != true || lines[1]["user"] != "a" || lines[2]["user"] != "b" {
			t.Errorf("file holds %v", lines)
		}
		if stderr.Len() != 0 {
			t.Errorf("stderr got %q", stderr.String())
		}
	})
	t.Run("reopen after rotation", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.log")
		a, err := OpenAuditLog(config.Log{AuditFile: path}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		a.AuthFailed("before", "c", AuthReasonUnknownUser)
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
		a.AuthFailed("moved", "c", AuthReasonUnknownUser) // still to the moved file
		if err := a.Reopen(); err != nil {
			t.Fatal(err)
		}
		a.AuthFailed("after", "c", AuthReasonUnknownUser)
		for file, want := range map[string][]string{path + ".1": {"before", "moved"}, path: {"after"}} {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var users []string
			for _, l := range jsonLines(t, data) {
				users = append(users, l["user"].(string))
			}
			if !slices.Equal(users, want) {
				t.Errorf("%s holds users %q, want %q", filepath.Base(file), users, want)
			}
		}
	})
	t.Run("new file is 0600", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "new.log")
		a, err := OpenAuditLog(config.Log{AuditFile: path}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("mode %v, want 0600", perm)
		}
	})
	t.Run("stderr", func(t *testing.T) {
		var stderr bytes.Buffer
		a, err := OpenAuditLog(config.Log{}, &stderr)
		if err != nil {
			t.Fatal(err)
		}
		a.AuthFailed("u", "c", AuthReasonTimeout)
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if lines := jsonLines(t, stderr.Bytes()); len(lines) != 1 || lines[0]["log"] != "audit" {
			t.Errorf("stderr holds %v", lines)
		}
	})
	t.Run("unwritable", func(t *testing.T) {
		_, err := OpenAuditLog(config.Log{AuditFile: filepath.Join(t.TempDir(), "no", "such", "dir", "a.log")}, nil)
		if err == nil || !strings.Contains(err.Error(), "log.audit_file") {
			t.Errorf("err = %v, want one naming log.audit_file", err)
		}
	})
}

// Through the proxy: a blocked statement, an admin statement and a failed
// login each leave one audit line naming the session; allowed statements
// leave none.
func TestAuditLogEndToEnd(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.Log.RedactLiterals = true })
	ctx := context.Background()

	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "select count(*) from orders where amount > 0"); err != nil {
		t.Fatal(err)
	}
	const blocked = "select * from pg_catalog.pg_authid where rolpassword = 'hunter2'"
	if _, err := conn.Exec(ctx, blocked); sqlstate(err) != "42501" {
		t.Fatalf("blocked statement: %v, want 42501", err)
	}
	admin := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeSimpleProtocol)
	if _, err := admin.Exec(ctx, "select 'admin-literal'"); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, p.dsn("acme_app", "wrong")); sqlstate(err) != "28P01" {
		t.Fatalf("bad password: %v, want 28P01", err)
	}

	byEvent := map[string][]map[string]any{}
	for _, l := range p.audit.lines(t) {
		if l["log"] != "audit" {
			t.Errorf("line without log=audit: %v", l)
		}
		ev, _ := l["event"].(string)
		byEvent[ev] = append(byEvent[ev], l)
	}
	if n := len(byEvent[AuditBlocked]) + len(byEvent[AuditAdmin]) + len(byEvent[AuditAuthFailed]); n != len(p.audit.lines(t)) || n != 3 {
		t.Fatalf("audit events %v, want one blocked, one admin, one auth_failed", byEvent)
	}
	wantFields(t, byEvent[AuditBlocked][0], map[string]any{
		"tenant": "acme", "user": "acme_app", "sqlstate": "42501",
		"fingerprint": policy.Fingerprint(blocked),
		"statement":   "select * from pg_catalog.pg_authid where rolpassword = $1",
	})
	wantFields(t, byEvent[AuditAdmin][0], map[string]any{"user": "dba", "statement": "select $1"})
	wantFields(t, byEvent[AuditAuthFailed][0], map[string]any{"user": "acme_app", "reason": AuthReasonBadPassword})
	for ev, ls := range byEvent {
		if c, _ := ls[0]["client"].(string); !strings.HasPrefix(c, "127.0.0.1:") {
			t.Errorf("%s: client %q, want the client's address", ev, c)
		}
	}
}

// An admin's FunctionCall (a function called by OID) is audited like its
// statements.
func TestAuditAdminFunctionCall(t *testing.T) {
	p := startProxy(t, nil)
	admin := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeSimpleProtocol)
	h, err := admin.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Conn.Close()
	h.Conn.SetDeadline(time.Now().Add(10 * time.Second))
	const pgBackendPID = 2026 // pg_catalog.pg_backend_pid()
	h.Frontend.Send(&pgproto3.FunctionCall{Function: pgBackendPID, ResultFormatCode: 0})
	if err := h.Frontend.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := h.Frontend.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("FunctionCall: %s %s", e.Code, e.Message)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	var found bool
	for _, l := range p.audit.lines(t) {
		found = found || l["event"] == AuditAdmin && l["statement"] == "SELECT 2026::pg_catalog.regprocedure /* FunctionCall */"
	}
	if !found {
		t.Errorf("no admin audit line for the FunctionCall: %v", p.audit.lines(t))
	}
}
