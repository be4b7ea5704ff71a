package proxy

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgmoat/pgmoat/config"
)

// pgVerifier was produced by PostgreSQL 15 (ALTER ROLE ... PASSWORD
// 'correct horse'; SELECT rolpassword FROM pg_authid).
const (
	pgVerifier         = "SCRAM-SHA-256$4096:BOUnqVaQHMC3u5kvHNq7Tw==$J7C1KbSzKYm3CHLR8NZwp+rHgTo632ScDeS7RgQwqcE=:+0PX4Q6p9oRQ2YHqJqfqkWgCQPhEGJz4PtPWzKGwwzw="
	pgVerifierPassword = "correct horse"
)

// authTestConn is the server end of a client connection as the session
// gives it to an Authenticator.
type authTestConn struct {
	*msgReader
	*msgWriter
	encrypted bool
}

func newAuthTestConn(c net.Conn) *authTestConn {
	return &authTestConn{msgReader: newMsgReader(c, 1<<16), msgWriter: newMsgWriter(c)}
}

func (c *authTestConn) Encrypted() bool { return c.encrypted }

func testPasswordAuth(t *testing.T) *PasswordAuth {
	t.Helper()
	a, err := NewPasswordAuth([]config.User{
		{Name: "alice", Password: "s3cret", Tenant: "acme"},
		{Name: "bob", SCRAMVerifier: pgVerifier, Tenant: "globex", ReadOnly: true},
		{Name: "root", Password: "admin pw", Admin: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// runAuth runs a.Authenticate for user on one end of a pipe and client on
// the other, and returns both results. The server end is closed when
// Authenticate returns, so a client waiting for a reply that will not come
// gets an error rather than hanging.
func runAuth(t *testing.T, a Authenticator, user string, prepare func(net.Conn), client func(*pgproto3.Frontend) error) (Identity, error, error) {
	t.Helper()
	return runAuthOn(t, a, user, false, prepare, client)
}

// runAuthOn is runAuth on a connection that reports encrypted as its TLS
// state.
func runAuthOn(t *testing.T, a Authenticator, user string, encrypted bool, prepare func(net.Conn), client func(*pgproto3.Frontend) error) (Identity, error, error) {
	t.Helper()
	cc, sc := net.Pipe()
	if prepare != nil {
		prepare(sc)
	}
	type result struct {
		id  Identity
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn := newAuthTestConn(sc)
		conn.encrypted = encrypted
		id, err := a.Authenticate(conn, user)
		sc.Close()
		done <- result{id, err}
	}()
	clientErr := client(pgproto3.NewFrontend(cc, cc))
	cc.Close()
	r := <-done
	return r.id, r.err, clientErr
}

func receive[T pgproto3.BackendMessage](fe *pgproto3.Frontend) (T, error) {
	var zero T
	msg, err := fe.Receive()
	if err != nil {
		return zero, err
	}
	m, ok := msg.(T)
	if !ok {
		return zero, fmt.Errorf("got %T, want %T", msg, zero)
	}
	return m, nil
}

// scramClient plays libpq's side of the exchange: an empty SCRAM user name
// (the startup user counts), no channel binding, and it verifies the
// server's signature before accepting AuthenticationOk.
func scramClient(password string) func(*pgproto3.Frontend) error {
	return func(fe *pgproto3.Frontend) error {
		sasl, err := receive[*pgproto3.AuthenticationSASL](fe)
		if err != nil {
			return err
		}
		if len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
			return fmt.Errorf("mechanisms %q", sasl.AuthMechanisms)
		}
		c, err := scram.SHA256.NewClient("", password, "")
		if err != nil {
			return err
		}
		conv := c.NewConversation()
		first, err := conv.Step("")
		if err != nil {
			return err
		}
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte(first)})
		if err := fe.Flush(); err != nil {
			return err
		}
		cont, err := receive[*pgproto3.AuthenticationSASLContinue](fe)
		if err != nil {
			return err
		}
		final, err := conv.Step(string(cont.Data))
		if err != nil {
			return err
		}
		fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
		if err := fe.Flush(); err != nil {
			return err
		}
		fin, err := receive[*pgproto3.AuthenticationSASLFinal](fe)
		if err != nil {
			return err
		}
		if _, err := conv.Step(string(fin.Data)); err != nil {
			return fmt.Errorf("server signature: %w", err)
		}
		_, err = receive[*pgproto3.AuthenticationOk](fe)
		return err
	}
}

func TestAuthSuccess(t *testing.T) {
	a := testPasswordAuth(t)
	tests := []struct {
		user, password string
		want           Identity
	}{
		{"alice", "s3cret", Identity{User: "alice", Tenant: "acme"}},
		{"bob", pgVerifierPassword, Identity{User: "bob", Tenant: "globex", ReadOnly: true}},
		{"root", "admin pw", Identity{User: "root", Admin: true}},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			id, err, clientErr := runAuth(t, a, tt.user, nil, scramClient(tt.password))
			if err != nil || clientErr != nil {
				t.Fatalf("server: %v, client: %v", err, clientErr)
			}
			if id != tt.want {
				t.Errorf("identity = %+v, want %+v", id, tt.want)
			}
		})
	}
}

func TestAuthPasswordFailure(t *testing.T) {
	a := testPasswordAuth(t)
	tests := []struct {
		name, user, password, reason string
	}{
		{"wrong password", "alice", "wrong", AuthReasonBadPassword},
		{"wrong password, verifier user", "bob", "wrong", AuthReasonBadPassword},
		{"unknown user", "mallory", "s3cret", AuthReasonUnknownUser},
	}
	var messages []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err, clientErr := runAuth(t, a, tt.user, nil, scramClient(tt.password))
			ae := wantAuthError(t, err, "28P01", tt.reason)
			if clientErr == nil {
				t.Error("client saw the exchange succeed")
			}
			// Only the user name may differ between the messages.
			messages = append(messages, strings.Replace(ae.Message, `"`+tt.user+`"`, `"USER"`, 1))
		})
	}
	for _, m := range messages[1:] {
		if m != messages[0] {
			t.Errorf("messages differ: %q vs %q", m, messages[0])
		}
	}
}

// An unknown user is shown the same salt on every attempt, as a real user
// is; a new salt per attempt would reveal that the user does not exist.
func TestAuthUnknownUserStableSalt(t *testing.T) {
	a := testPasswordAuth(t)
	salt := func(user string) string {
		var got string
		_, err, _ := runAuth(t, a, user, nil, func(fe *pgproto3.Frontend) error {
			if _, err := receive[*pgproto3.AuthenticationSASL](fe); err != nil {
				return err
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijkl")})
			if err := fe.Flush(); err != nil {
				return err
			}
			cont, err := receive[*pgproto3.AuthenticationSASLContinue](fe)
			if err != nil {
				return err
			}
			for f := range strings.SplitSeq(string(cont.Data), ",") {
				if s, ok := strings.CutPrefix(f, "s="); ok {
					got = s
				}
			}
			return nil
		})
		if err == nil {
			t.Errorf("user %s: authenticated without a proof", user)
		}
		return got
	}
	s1, s2, other := salt("mallory"), salt("mallory"), salt("trudy")
	if s1 == "" || s1 != s2 {
		t.Errorf("salts for the same unknown user: %q, %q", s1, s2)
	}
	if s1 == other {
		t.Errorf("two unknown users got the same salt %q", s1)
	}
}

func TestAuthProtocolError(t *testing.T) {
	a := testPasswordAuth(t)
	// sendFirst answers AuthenticationSASL with msg.
	sendFirst := func(msg pgproto3.FrontendMessage) func(*pgproto3.Frontend) error {
		return func(fe *pgproto3.Frontend) error {
			if _, err := receive[*pgproto3.AuthenticationSASL](fe); err != nil {
				return err
			}
			fe.Send(msg)
			return fe.Flush()
		}
	}
	// sendFinal answers AuthenticationSASLContinue with data.
	sendFinal := func(data string) func(*pgproto3.Frontend) error {
		return func(fe *pgproto3.Frontend) error {
			if err := sendFirst(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijkl")})(fe); err != nil {
				return err
			}
			if _, err := receive[*pgproto3.AuthenticationSASLContinue](fe); err != nil {
				return err
			}
			fe.Send(&pgproto3.SASLResponse{Data: []byte(data)})
			return fe.Flush()
		}
	}
	tests := []struct {
		name   string
		client func(*pgproto3.Frontend) error
	}{
		{"query instead of SASL", sendFirst(&pgproto3.Query{String: "select 1"})},
		{"password message", sendFirst(&pgproto3.PasswordMessage{Password: "s3cret"})},
		{"garbage SASL data", sendFirst(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("garbage")})},
		{"no SASL data", sendFirst(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256"})},
		{"other mechanism", sendFirst(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})},
		{"authzid", sendFirst(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,a=bob,n=,r=abcdefghijkl")})},
		{"garbage final", sendFinal("garbage")},
		{"wrong nonce", sendFinal("c=biws,r=notthenonce,p=" + base64.StdEncoding.EncodeToString(make([]byte, 32)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, user := range []string{"alice", "mallory"} {
				_, err, _ := runAuth(t, a, user, nil, tt.client)
				wantAuthError(t, err, "08P01", AuthReasonProtocol)
			}
		})
	}
}

func TestAuthTimeout(t *testing.T) {
	a := testPasswordAuth(t)
	// The read deadline has passed: the server's first read times out
	// after it has sent AuthenticationSASL. The client stays connected
	// (waiting for a message that never comes) until Authenticate returns.
	expired := func(c net.Conn) { c.SetReadDeadline(time.Unix(1, 0)) }
	_, err, _ := runAuth(t, a, "alice", expired, func(fe *pgproto3.Frontend) error {
		if _, err := receive[*pgproto3.AuthenticationSASL](fe); err != nil {
			return err
		}
		_, err := fe.Receive()
		return err
	})
	wantAuthError(t, err, "57014", AuthReasonTimeout)
}

// A client that hangs up is a connection failure, not an AuthError: there is
// nobody to send an ErrorResponse to.
func TestAuthClientGone(t *testing.T) {
	a := testPasswordAuth(t)
	_, err, _ := runAuth(t, a, "alice", nil, func(fe *pgproto3.Frontend) error {
		_, err := receive[*pgproto3.AuthenticationSASL](fe)
		return err
	})
	if err == nil {
		t.Fatal("no error")
	}
	if ae, ok := errors.AsType[*AuthError](err); ok {
		t.Errorf("got AuthError %+v, want a connection error", ae)
	}
}

func wantAuthError(t *testing.T, err error, sqlstate, reason string) *AuthError {
	t.Helper()
	ae, ok := errors.AsType[*AuthError](err)
	if !ok {
		t.Fatalf("error = %v, want *AuthError", err)
	}
	if ae.SQLState != sqlstate || ae.Reason != reason {
		t.Errorf("SQLSTATE %s reason %s (%v), want %s %s", ae.SQLState, ae.Reason, err, sqlstate, reason)
	}
	return ae
}

func TestSCRAMVerifierRoundTrip(t *testing.T) {
	v, err := SCRAMVerifier("tr0ub4dor&3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseSCRAMVerifier(v); err != nil {
		t.Fatalf("ParseSCRAMVerifier(SCRAMVerifier()): %v", err)
	}
	a, err := NewPasswordAuth([]config.User{{Name: "carol", SCRAMVerifier: v, Tenant: "initech"}})
	if err != nil {
		t.Fatal(err)
	}
	id, err, clientErr := runAuth(t, a, "carol", nil, scramClient("tr0ub4dor&3"))
	if err != nil || clientErr != nil {
		t.Fatalf("server: %v, client: %v", err, clientErr)
	}
	if id.Tenant != "initech" {
		t.Errorf("tenant = %q", id.Tenant)
	}
	_, err, _ = runAuth(t, a, "carol", nil, scramClient("tr0ub4dor&4"))
	wantAuthError(t, err, "28P01", AuthReasonBadPassword)
}

func TestParseSCRAMVerifier(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	short := base64.StdEncoding.EncodeToString(make([]byte, 20))
	tests := []struct {
		name, v string
		ok      bool
	}{
		{"postgres", pgVerifier, true},
		{"minimal", "SCRAM-SHA-256$1:c2FsdA==$" + key + ":" + key, true},
		{"md5", "md5" + strings.Repeat("0", 32), false},
		{"plain password", "hunter2", false},
		{"other mechanism", "SCRAM-SHA-1$4096:c2FsdA==$" + key + ":" + key, false},
		{"zero iterations", "SCRAM-SHA-256$0:c2FsdA==$" + key + ":" + key, false},
		{"bad iterations", "SCRAM-SHA-256$x:c2FsdA==$" + key + ":" + key, false},
		{"empty salt", "SCRAM-SHA-256$4096:$" + key + ":" + key, false},
		{"bad salt", "SCRAM-SHA-256$4096:!!$" + key + ":" + key, false},
		{"short StoredKey", "SCRAM-SHA-256$4096:c2FsdA==$" + short + ":" + key, false},
		{"short ServerKey", "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":" + short, false},
		{"missing ServerKey", "SCRAM-SHA-256$4096:c2FsdA==$" + key, false},
		{"missing keys", "SCRAM-SHA-256$4096:c2FsdA==", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSCRAMVerifier(tt.v)
			if (err == nil) != tt.ok {
				t.Errorf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestNewPasswordAuthErrors(t *testing.T) {
	tests := []struct {
		name  string
		users []config.User
	}{
		{"no secret", []config.User{{Name: "alice", Tenant: "acme"}}},
		{"no name", []config.User{{Password: "x", Tenant: "acme"}}},
		{"duplicate", []config.User{{Name: "alice", Password: "x"}, {Name: "alice", Password: "y"}}},
		{"bad verifier", []config.User{{Name: "alice", SCRAMVerifier: "SCRAM-SHA-256$nope"}}},
		{"missing password file", []config.User{{Name: "alice", PasswordFile: "/nonexistent/pgmoat-password"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewPasswordAuth(tt.users); err == nil {
				t.Error("no error")
			}
		})
	}
}

// TestAuthPgconnClient checks the exchange against pgx's independent SCRAM
// client over TCP, including the ErrorResponse a caller makes of an
// AuthError.
func TestAuthPgconnClient(t *testing.T) {
	a := testPasswordAuth(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveAuthOnly(a, c)
		}
	}()
	tests := []struct {
		user, password, sqlstate string
	}{
		{"alice", "s3cret", ""},
		{"bob", pgVerifierPassword, ""},
		{"alice", "wrong", "28P01"},
		{"mallory", "s3cret", "28P01"},
	}
	for _, tt := range tests {
		t.Run(tt.user+"/"+tt.password, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			dsn := (&url.URL{
				Scheme:   "postgres",
				User:     url.UserPassword(tt.user, tt.password),
				Host:     ln.Addr().String(),
				Path:     "/db",
				RawQuery: "sslmode=disable",
			}).String()
			conn, err := pgconn.Connect(ctx, dsn)
			if tt.sqlstate == "" {
				if err != nil {
					t.Fatal(err)
				}
				conn.Close(ctx)
				return
			}
			pgErr, ok := errors.AsType[*pgconn.PgError](err)
			if !ok || pgErr.Code != tt.sqlstate {
				t.Errorf("err = %v, want SQLSTATE %s", err, tt.sqlstate)
			}
		})
	}
}

// serveAuthOnly is the smallest server pgconn accepts: startup packet,
// authentication, ReadyForQuery; or the ErrorResponse for an AuthError.
func serveAuthOnly(a Authenticator, c net.Conn) {
	defer c.Close()
	conn := newAuthTestConn(c)
	body, err := conn.NextStartup()
	if err != nil {
		return
	}
	var startup pgproto3.StartupMessage
	if err := startup.Decode(body); err != nil {
		return
	}
	_, err = a.Authenticate(conn, startup.Parameters["user"])
	if ae, ok := errors.AsType[*AuthError](err); ok {
		conn.Send(&pgproto3.ErrorResponse{Severity: "FATAL", Code: ae.SQLState, Message: ae.Message})
		conn.Flush()
		return
	}
	if err != nil {
		return
	}
	conn.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	conn.Flush()
	// Wait for Terminate or EOF.
	conn.Next()
}

// md5Client answers AuthenticationMD5Password as libpq does.
func md5Client(user, password string) func(*pgproto3.Frontend) error {
	return func(fe *pgproto3.Frontend) error {
		req, err := receive[*pgproto3.AuthenticationMD5Password](fe)
		if err != nil {
			return err
		}
		inner := md5Hex(password, user)
		sum := md5.Sum(append(inner, req.Salt[:]...))
		fe.Send(&pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(sum[:])})
		if err := fe.Flush(); err != nil {
			return err
		}
		_, err = receive[*pgproto3.AuthenticationOk](fe)
		return err
	}
}

// cleartextClient answers AuthenticationCleartextPassword.
func cleartextClient(password string) func(*pgproto3.Frontend) error {
	return func(fe *pgproto3.Frontend) error {
		if _, err := receive[*pgproto3.AuthenticationCleartextPassword](fe); err != nil {
			return err
		}
		fe.Send(&pgproto3.PasswordMessage{Password: password})
		if err := fe.Flush(); err != nil {
			return err
		}
		_, err := receive[*pgproto3.AuthenticationOk](fe)
		return err
	}
}

// methodUsers has a user of every method and credential kind. The md5
// verifier was computed independently (Python hashlib) as PostgreSQL
// stores it: "md5" || hex(md5(password || user)).
var methodUsers = []config.User{
	{Name: "scram_pw", Password: "pw1", Tenant: "acme"},
	{Name: "md5_pw", Auth: config.AuthMD5, Password: "pw2", Tenant: "acme"},
	{Name: "legacy_app", Auth: config.AuthMD5, MD5Verifier: "md511ad2f8aab838ecc0045d58772751ac3", Tenant: "globex"},
	{Name: "clear_pw", Auth: config.AuthPassword, Password: "pw3", Tenant: "acme"},
	{Name: "clear_scram", Auth: config.AuthPassword, SCRAMVerifier: pgVerifier, Tenant: "globex"},
	{Name: "clear_md5", Auth: config.AuthPassword, MD5Verifier: MD5Verifier("legacy-secret", "clear_md5"), Tenant: "globex"},
	{Name: "clear_lan", Auth: config.AuthPassword, AllowCleartextWithoutTLS: true, Password: "pw4", Tenant: "acme"},
}

func TestMD5Verifier(t *testing.T) {
	if got, want := MD5Verifier("legacy-secret", "legacy_app"), "md511ad2f8aab838ecc0045d58772751ac3"; got != want {
		t.Errorf("MD5Verifier = %s, want %s", got, want)
	}
}

func TestAuthMethods(t *testing.T) {
	a, err := NewPasswordAuth(methodUsers)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		user      string
		encrypted bool
		client    func(*pgproto3.Frontend) error
		sqlstate  string // "" means success
		reason    string
	}{
		{"md5 password", "md5_pw", false, md5Client("md5_pw", "pw2"), "", ""},
		{"md5 verifier", "legacy_app", false, md5Client("legacy_app", "legacy-secret"), "", ""},
		{"md5 wrong password", "md5_pw", false, md5Client("md5_pw", "pw3"), "28P01", AuthReasonBadPassword},
		// The digest is salted with the user name: another name's digest
		// of the right password does not match.
		{"md5 digest for another user", "md5_pw", false, md5Client("scram_pw", "pw2"), "28P01", AuthReasonBadPassword},
		{"cleartext over TLS", "clear_pw", true, cleartextClient("pw3"), "", ""},
		{"cleartext against a SCRAM verifier", "clear_scram", true, cleartextClient(pgVerifierPassword), "", ""},
		{"cleartext against an md5 verifier", "clear_md5", true, cleartextClient("legacy-secret"), "", ""},
		{"cleartext allowed without TLS", "clear_lan", false, cleartextClient("pw4"), "", ""},
		{"cleartext wrong password", "clear_pw", true, cleartextClient("pw4"), "28P01", AuthReasonBadPassword},
		{"cleartext wrong password, SCRAM verifier", "clear_scram", true, cleartextClient("wrong"), "28P01", AuthReasonBadPassword},
		{"cleartext wrong password, md5 verifier", "clear_md5", true, cleartextClient("wrong"), "28P01", AuthReasonBadPassword},
		{"cleartext empty password", "clear_pw", true, cleartextClient(""), "28P01", AuthReasonBadPassword},
		{"cleartext without TLS", "clear_pw", false, cleartextClient("pw3"), "28000", AuthReasonTLSRequired},
		{"cleartext without TLS, verifier", "clear_scram", false, cleartextClient(pgVerifierPassword), "28000", AuthReasonTLSRequired},
		{"scram unchanged", "scram_pw", false, scramClient("pw1"), "", ""},
		{"md5 answered with SASL", "md5_pw", false, func(fe *pgproto3.Frontend) error {
			if _, err := receive[*pgproto3.AuthenticationMD5Password](fe); err != nil {
				return err
			}
			fe.Send(&pgproto3.Query{String: "select 1"})
			if err := fe.Flush(); err != nil {
				return err
			}
			_, err := fe.Receive()
			return err
		}, "08P01", AuthReasonProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err, clientErr := runAuthOn(t, a, tt.user, tt.encrypted, nil, tt.client)
			if tt.sqlstate == "" {
				if err != nil || clientErr != nil {
					t.Fatalf("server: %v, client: %v", err, clientErr)
				}
				if id.User != tt.user {
					t.Errorf("identity %+v, want user %s", id, tt.user)
				}
				return
			}
			wantAuthError(t, err, tt.sqlstate, tt.reason)
			if clientErr == nil {
				t.Error("client saw the exchange succeed")
			}
		})
	}
}

// Without TLS a cleartext user is refused before the server asks for the
// password, so the client never sends it.
func TestAuthCleartextRefusedBeforeAsking(t *testing.T) {
	a, err := NewPasswordAuth(methodUsers)
	if err != nil {
		t.Fatal(err)
	}
	_, err, _ = runAuth(t, a, "clear_pw", nil, func(fe *pgproto3.Frontend) error {
		msg, err := fe.Receive()
		if err == nil {
			t.Errorf("server sent %T to a plaintext cleartext-password client", msg)
		}
		return err
	})
	wantAuthError(t, err, "28000", AuthReasonTLSRequired)
}

// An unknown user is challenged with the method most users have and fails
// only after answering, with a wrong password's message.
func TestAuthUnknownUserMethod(t *testing.T) {
	tests := []struct {
		name      string
		users     []config.User
		encrypted bool
		client    func(*pgproto3.Frontend) error
		sqlstate  string
		reason    string
	}{
		{"scram by default", []config.User{
			{Name: "a", Password: "x", Tenant: "t"},
			{Name: "b", Auth: config.AuthMD5, Password: "x", Tenant: "t"},
			{Name: "c", Auth: config.AuthPassword, Password: "x", Tenant: "t"},
		}, false, scramClient("x"), "28P01", AuthReasonUnknownUser},
		{"md5 when most users have md5", []config.User{
			{Name: "a", Auth: config.AuthMD5, Password: "x", Tenant: "t"},
			{Name: "b", Auth: config.AuthMD5, Password: "x", Tenant: "t"},
			{Name: "c", Password: "x", Tenant: "t"},
		}, false, md5Client("nobody", "x"), "28P01", AuthReasonUnknownUser},
		{"cleartext when most users have it", []config.User{
			{Name: "a", Auth: config.AuthPassword, Password: "x", Tenant: "t"},
		}, true, cleartextClient("x"), "28P01", AuthReasonUnknownUser},
		{"cleartext without TLS as for the known users", []config.User{
			{Name: "a", Auth: config.AuthPassword, Password: "x", Tenant: "t"},
		}, false, cleartextClient("x"), "28000", AuthReasonTLSRequired},
		{"cleartext without TLS allowed for every cleartext user", []config.User{
			{Name: "a", Auth: config.AuthPassword, AllowCleartextWithoutTLS: true, Password: "x", Tenant: "t"},
		}, false, cleartextClient("x"), "28P01", AuthReasonUnknownUser},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewPasswordAuth(tt.users)
			if err != nil {
				t.Fatal(err)
			}
			_, err, _ = runAuthOn(t, a, "nobody", tt.encrypted, nil, tt.client)
			ae := wantAuthError(t, err, tt.sqlstate, tt.reason)
			if tt.sqlstate == "28P01" && ae.Message != `password authentication failed for user "nobody"` {
				t.Errorf("message %q differs from a wrong password's", ae.Message)
			}
		})
	}
}

func TestNewPasswordAuthMethodErrors(t *testing.T) {
	tests := []struct {
		name string
		user config.User
	}{
		{"md5 with SCRAM verifier", config.User{Name: "a", Auth: config.AuthMD5, SCRAMVerifier: pgVerifier}},
		{"scram with md5 verifier", config.User{Name: "a", MD5Verifier: "md5" + strings.Repeat("0", 32)}},
		{"bad md5 verifier", config.User{Name: "a", Auth: config.AuthMD5, MD5Verifier: "md5xyz"}},
		{"upper-case md5 verifier", config.User{Name: "a", Auth: config.AuthMD5, MD5Verifier: "md5" + strings.Repeat("A", 32)}},
		{"two credentials", config.User{Name: "a", Auth: config.AuthPassword, Password: "x", MD5Verifier: "md5" + strings.Repeat("0", 32)}},
		{"unknown method", config.User{Name: "a", Auth: "trust", Password: "x"}},
		{"cleartext flag on md5", config.User{Name: "a", Auth: config.AuthMD5, AllowCleartextWithoutTLS: true, Password: "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewPasswordAuth([]config.User{tt.user}); err == nil {
				t.Error("no error")
			}
		})
	}
}

// TestAuthMethodsThroughProxy logs in with pgx's own md5 and cleartext
// implementations, over TLS and not, and checks that each login lands in
// its tenant.
func TestAuthMethodsThroughProxy(t *testing.T) {
	certFile, keyFile := writeTestCert(t, t.TempDir())
	clearVerifier, err := SCRAMVerifier("clear_secret")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(c *config.Config) {
		c.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile}
		c.Users = append(slices.Clone(c.Users),
			config.User{Name: "md5_app", Auth: config.AuthMD5, Password: "md5_secret", Tenant: "acme"},
			config.User{Name: "md5v_app", Auth: config.AuthMD5, MD5Verifier: MD5Verifier("md5v_secret", "md5v_app"), Tenant: "globex"},
			config.User{Name: "clear_app", Auth: config.AuthPassword, SCRAMVerifier: clearVerifier, Tenant: "globex"},
			config.User{Name: "lan_app", Auth: config.AuthPassword, AllowCleartextWithoutTLS: true, Password: "lan_secret", Tenant: "acme"},
		)
	})
	tests := []struct {
		user, password string
		tls            bool
		tenant         string // "" when the login fails
		sqlstate       string
	}{
		{"md5_app", "md5_secret", false, "acme", ""},
		{"md5_app", "md5_secret", true, "acme", ""},
		{"md5v_app", "md5v_secret", false, "globex", ""},
		{"md5_app", "wrong", false, "", "28P01"},
		{"clear_app", "clear_secret", true, "globex", ""},
		{"clear_app", "clear_secret", false, "", "28000"},
		{"clear_app", "wrong", true, "", "28P01"},
		{"lan_app", "lan_secret", false, "acme", ""},
		{"lan_app", "lan_secret", true, "acme", ""},
		{"acme_app", "acme_secret", true, "acme", ""}, // SCRAM unchanged
		{"nobody", "x", false, "", "28P01"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/tls=%v/%s", tt.user, tt.tls, tt.password), func(t *testing.T) {
			dsn := p.dsn(tt.user, tt.password)
			if tt.tls {
				dsn = strings.Replace(dsn, "sslmode=disable", "sslmode=verify-full sslrootcert="+certFile, 1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, dsn)
			if tt.sqlstate != "" {
				if got := sqlstate(err); got != tt.sqlstate {
					t.Fatalf("connect: %v, want SQLSTATE %s", err, tt.sqlstate)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			if _, encrypted := conn.PgConn().Conn().(*tls.Conn); encrypted != tt.tls {
				t.Errorf("encrypted = %v", encrypted)
			}
			wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), tt.tenant)
		})
	}
}
