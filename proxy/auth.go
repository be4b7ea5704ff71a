package proxy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgmoat/pgmoat/config"
)

// Identity is who a client authenticated as; nothing downstream cares how.
type Identity struct {
	User, Tenant    string
	ReadOnly, Admin bool
}

// authConn is the client connection as an authenticator sees it.
type authConn interface {
	// Send buffers a message (msgWriter.Send has this signature).
	Send(msg interface{ Encode([]byte) ([]byte, error) }) error
	// Flush writes what Send buffered.
	Flush() error
	// Next is msgReader.Next: the whole message including its 5-byte
	// header, valid until the next call.
	Next() (typ byte, msg []byte, err error)
}

// Authenticator turns a startup into an Identity, speaking the
// authentication exchange on c. user is the startup packet's user.
//
// On success the client has been sent AuthenticationOk (flushed). On failure
// an *AuthError says what to tell the client; the Authenticator does not send
// the ErrorResponse itself, so that the caller turns every error into a
// client response in one place (and counts it). Any other error means the
// connection failed (the client went away): there is nobody to tell.
type Authenticator interface {
	Authenticate(c authConn, user string) (Identity, error)
}

// Authentication failure reasons: the closed set of values of the
// pgmoat_auth_failures_total reason label.
const (
	AuthReasonUnknownUser = "unknown_user"
	AuthReasonBadPassword = "bad_password"
	AuthReasonProtocol    = "protocol"
	AuthReasonTimeout     = "timeout"
)

// AuthError is a failed authentication. SQLState and Message are what the
// client is told; Reason is the metric label; Err is the cause, for the
// process log only: it may say whether the user exists, which the client
// must not learn.
type AuthError struct {
	SQLState string // 28P01, 08P01 or 57014
	Message  string // PostgreSQL's wording
	Reason   string // one of the AuthReason* constants
	Err      error  // cause; never shown to the client
}

// Error is for logs. It includes the cause; send Message to the client.
func (e *AuthError) Error() string {
	if e.Err == nil {
		return e.Message
	}
	return e.Message + ": " + e.Err.Error()
}

func (e *AuthError) Unwrap() error { return e.Err }

const (
	scramMechanism = "SCRAM-SHA-256"
	// scramIterations is PostgreSQL's default scram_iterations.
	scramIterations = 4096
	scramSaltLen    = 16
)

// PasswordAuth authenticates configured users with SCRAM-SHA-256, as
// PostgreSQL does for password_encryption = scram-sha-256. It is immutable
// once built and safe for concurrent use; a config reload builds a new one.
type PasswordAuth struct {
	users map[string]passwordUser
	// mockKey makes the salt shown to an unknown user a function of the
	// name (as PostgreSQL's scram_mock_salt does): a fresh salt on every
	// attempt would tell a prober that the user does not exist.
	mockKey []byte
}

type passwordUser struct {
	id    Identity
	creds scram.StoredCredentials
}

// NewPasswordAuth derives SCRAM credentials for users. A user with a
// Password (or PasswordFile) gets a random salt and 4096 iterations, so
// building costs one PBKDF2 derivation per such user; a user with a
// SCRAMVerifier uses it as it is.
func NewPasswordAuth(users []config.User) (*PasswordAuth, error) {
	a := &PasswordAuth{users: make(map[string]passwordUser, len(users)), mockKey: make([]byte, 32)}
	if _, err := rand.Read(a.mockKey); err != nil {
		return nil, fmt.Errorf("mock salt key: %w", err)
	}
	for i, u := range users {
		if u.Name == "" {
			return nil, fmt.Errorf("users[%d]: empty name", i)
		}
		if _, dup := a.users[u.Name]; dup {
			return nil, fmt.Errorf("user %q: defined twice", u.Name)
		}
		creds, err := userCredentials(u)
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", u.Name, err)
		}
		a.users[u.Name] = passwordUser{
			id:    Identity{User: u.Name, Tenant: u.Tenant, ReadOnly: u.ReadOnly, Admin: u.Admin},
			creds: creds,
		}
	}
	return a, nil
}

func userCredentials(u config.User) (scram.StoredCredentials, error) {
	switch {
	case u.SCRAMVerifier != "":
		return ParseSCRAMVerifier(u.SCRAMVerifier)
	case u.Password != "":
		return newCredentials(u.Password)
	}
	// config.Load reads password_file into Password.
	return scram.StoredCredentials{}, errors.New("no password or scram_verifier")
}

// newCredentials derives SCRAM-SHA-256 credentials with a random salt.
func newCredentials(password string) (scram.StoredCredentials, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("salt: %w", err)
	}
	// Like PostgreSQL (and libpq), SASLprep the password if it can be
	// prepared and use the raw bytes otherwise, so that any password a
	// PostgreSQL client can send works.
	c, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		if c, err = scram.SHA256.NewClientUnprepped("", password, ""); err != nil {
			return scram.StoredCredentials{}, err
		}
	}
	creds, err := c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
	if err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("derive SCRAM keys: %w", err)
	}
	return creds, nil
}

// SCRAMVerifier returns a PostgreSQL-format SCRAM-SHA-256 verifier for
// password (random salt, 4096 iterations), for scram_verifier in the config.
func SCRAMVerifier(password string) (string, error) {
	creds, err := newCredentials(password)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s$%d:%s$%s:%s", scramMechanism, creds.Iters,
		b64([]byte(creds.Salt)), b64(creds.StoredKey), b64(creds.ServerKey)), nil
}

// ParseSCRAMVerifier parses a verifier in PostgreSQL's pg_authid format,
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64).
// Errors do not quote s: it is a secret.
func ParseSCRAMVerifier(s string) (scram.StoredCredentials, error) {
	bad := func(what string) (scram.StoredCredentials, error) {
		return scram.StoredCredentials{}, fmt.Errorf("invalid SCRAM verifier: %s", what)
	}
	mech, rest, ok := strings.Cut(s, "$")
	if !ok || mech != scramMechanism {
		return bad("must start with " + scramMechanism + "$")
	}
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("want <iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iterStr, saltB64, ok1 := strings.Cut(iterSalt, ":")
	storedB64, serverB64, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return bad("want <iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iters, err := strconv.Atoi(iterStr)
	if err != nil || iters <= 0 {
		return bad("iteration count is not a positive integer")
	}
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	if err != nil || len(salt) == 0 {
		return bad("salt is not base64")
	}
	stored, err := base64.StdEncoding.DecodeString(storedB64)
	if err != nil || len(stored) != sha256.Size {
		return bad("StoredKey is not a base64 SHA-256 digest")
	}
	server, err := base64.StdEncoding.DecodeString(serverB64)
	if err != nil || len(server) != sha256.Size {
		return bad("ServerKey is not a base64 SHA-256 digest")
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored,
		ServerKey:  server,
	}, nil
}

// mockCredentials are what an unknown user is challenged with: a salt that
// is stable per name and keys no proof can match, so that the exchange looks
// like a real one that fails on the proof.
func (a *PasswordAuth) mockCredentials(user string) (scram.StoredCredentials, error) {
	mac := hmac.New(sha256.New, a.mockKey)
	mac.Write([]byte(user))
	keys := make([]byte, 2*sha256.Size)
	if _, err := rand.Read(keys); err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("mock keys: %w", err)
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(mac.Sum(nil)[:scramSaltLen]), Iters: scramIterations},
		StoredKey:  keys[:sha256.Size],
		ServerKey:  keys[sha256.Size:],
	}, nil
}

// Authenticate runs the SCRAM-SHA-256 exchange (RFC 5802 / 7677, no channel
// binding) for the startup user. On success it has sent AuthenticationSASL,
// AuthenticationSASLContinue, AuthenticationSASLFinal and AuthenticationOk.
// An unknown user goes through the same exchange against mock credentials
// and fails at the proof with the same error as a wrong password. See
// Authenticator for the error contract.
//
// As in PostgreSQL, the user name inside the SCRAM messages is ignored (libpq
// sends an empty one): the startup user is the one authenticated.
func (a *PasswordAuth) Authenticate(c authConn, user string) (Identity, error) {
	u, known := a.users[user]
	creds := u.creds
	if !known {
		var err error
		if creds, err = a.mockCredentials(user); err != nil {
			return Identity{}, err
		}
	}
	srv, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
	if err != nil {
		return Identity{}, fmt.Errorf("scram server: %w", err)
	}
	conv := srv.NewConversation()

	if err := sendFlush(c, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return Identity{}, err
	}

	// client-first-message
	msg, err := nextSASL(c)
	if err != nil {
		return Identity{}, err
	}
	var first pgproto3.SASLInitialResponse
	if err := first.Decode(msg[5:]); err != nil {
		return Identity{}, protocolError("malformed SASLInitialResponse message", err)
	}
	if first.AuthMechanism != scramMechanism {
		return Identity{}, protocolError("client selected an invalid SASL authentication mechanism", nil)
	}
	serverFirst, err := conv.Step(string(first.Data))
	if err != nil {
		return Identity{}, protocolError("malformed SCRAM message", err)
	}
	if conv.AuthzID() != "" {
		return Identity{}, protocolError("client uses authorization identity, but it is not supported", nil)
	}
	if err := sendFlush(c, &pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}); err != nil {
		return Identity{}, err
	}

	// client-final-message
	if msg, err = nextSASL(c); err != nil {
		return Identity{}, err
	}
	var final pgproto3.SASLResponse
	if err := final.Decode(msg[5:]); err != nil {
		return Identity{}, protocolError("malformed SASLResponse message", err)
	}
	serverFinal, err := conv.Step(string(final.Data))
	switch {
	case err != nil && serverFinal != scram.ErrInvalidProof:
		// Unparseable message, nonce or channel-binding mismatch.
		return Identity{}, protocolError("malformed SCRAM message", err)
	case !known:
		if err == nil {
			err = errors.New("proof matched mock credentials") // 2^-256
		}
		return Identity{}, passwordFailed(user, AuthReasonUnknownUser, fmt.Errorf("unknown user: %w", err))
	case err != nil:
		return Identity{}, passwordFailed(user, AuthReasonBadPassword, err)
	}

	if err := c.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)}); err != nil {
		return Identity{}, err
	}
	if err := sendFlush(c, &pgproto3.AuthenticationOk{}); err != nil {
		return Identity{}, err
	}
	return u.id, nil
}

// nextSASL reads the client's next message, which must be a SASL response
// ('p'). The returned bytes are valid until the next read.
func nextSASL(c authConn) ([]byte, error) {
	typ, msg, err := c.Next()
	switch {
	case errors.Is(err, errMessageTooLarge):
		return nil, protocolError("invalid SASL response message", err)
	case err != nil:
		return nil, connError("read SASL response", err)
	case typ != 'p':
		return nil, protocolError(fmt.Sprintf("expected SASL response, got message type %d", typ), nil)
	}
	return msg, nil
}

func sendFlush(c authConn, msg interface{ Encode([]byte) ([]byte, error) }) error {
	if err := c.Send(msg); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return connError("write authentication request", err)
	}
	return nil
}

// connError classifies an I/O error: a deadline (the caller's
// authentication timeout) is an AuthError the client may still be told
// about, anything else a failed connection.
func connError(op string, err error) error {
	if isFramingError(err) {
		return protocolError("invalid message framing", err)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return &AuthError{
			SQLState: "57014", // query_canceled, as PostgreSQL's authentication_timeout
			Message:  "canceling authentication due to timeout",
			Reason:   AuthReasonTimeout,
			Err:      err,
		}
	}
	return fmt.Errorf("%s: %w", op, err)
}

func protocolError(msg string, cause error) *AuthError {
	return &AuthError{SQLState: "08P01", Message: msg, Reason: AuthReasonProtocol, Err: cause}
}

// passwordFailed is PostgreSQL's answer to both an unknown user and a wrong
// password; only Reason and Err (not shown to the client) differ.
func passwordFailed(user, reason string, cause error) *AuthError {
	return &AuthError{
		SQLState: "28P01",
		Message:  `password authentication failed for user "` + user + `"`,
		Reason:   reason,
		Err:      cause,
	}
}
