package proxy

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
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
	// Encrypted reports whether the connection runs over TLS.
	Encrypted() bool
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
	// AuthReasonTLSRequired: the user's method is a cleartext password
	// and the client did not use TLS.
	AuthReasonTLSRequired = "tls_required"
)

// AuthError is a failed authentication. SQLState and Message are what the
// client is told; Reason is the metric label; Err is the cause, for the
// process log only: it may say whether the user exists, which the client
// must not learn.
type AuthError struct {
	SQLState string // 28P01, 28000, 08P01 or 57014
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

// PasswordAuth authenticates configured users by password, each with its
// method (config.User.Auth): SCRAM-SHA-256 (the default), md5, or a
// cleartext password, as PostgreSQL's pg_hba methods of the same names do.
// It is immutable once built and safe for concurrent use; a config reload
// builds a new one.
type PasswordAuth struct {
	users map[string]passwordUser
	// mockKey makes the salt shown to an unknown user a function of the
	// name (as PostgreSQL's scram_mock_salt does): a fresh salt on every
	// attempt would tell a prober that the user does not exist. It also
	// keys the digests of plaintext passwords kept for the cleartext method.
	mockKey []byte
	// mock is how an unknown user is challenged: with the method most
	// users have, so that the challenge alone does not tell a prober that
	// a name is unknown. Its credentials never match.
	mock passwordUser
}

// passwordUser is a configured user and what its method needs to check a
// password. Only the fields of its method are set.
type passwordUser struct {
	id     Identity
	method string // config.AuthSCRAM, config.AuthMD5 or config.AuthPassword

	scram scram.StoredCredentials // AuthSCRAM; AuthPassword with a scram_verifier
	// md5 is the hex digest md5(password || user) without the "md5"
	// prefix: PostgreSQL's stored md5 password. AuthMD5; AuthPassword with
	// an md5_verifier.
	md5 []byte
	// plainMAC is HMAC-SHA-256(mockKey, password). AuthPassword with a
	// plaintext password.
	plainMAC []byte
	// cleartextWithoutTLS: AuthPassword is allowed on a plaintext
	// connection (config.User.AllowCleartextWithoutTLS).
	cleartextWithoutTLS bool
}

// NewPasswordAuth builds the credentials of users. For scram-sha-256 a user
// with a Password (or PasswordFile) gets a random salt and 4096 iterations,
// so building costs one PBKDF2 derivation per such user; a SCRAMVerifier is
// used as it is. For md5 the stored digest is md5(password || name) or the
// MD5Verifier. For password any credential will do: the client sends the
// plaintext, which is checked against whichever is configured.
func NewPasswordAuth(users []config.User) (*PasswordAuth, error) {
	a := &PasswordAuth{users: make(map[string]passwordUser, len(users)), mockKey: make([]byte, 32)}
	if _, err := rand.Read(a.mockKey); err != nil {
		return nil, fmt.Errorf("mock salt key: %w", err)
	}
	methods := map[string]int{}
	mockCleartext := true
	for i, u := range users {
		if u.Name == "" {
			return nil, fmt.Errorf("users[%d]: empty name", i)
		}
		if _, dup := a.users[u.Name]; dup {
			return nil, fmt.Errorf("user %q: defined twice", u.Name)
		}
		pu, err := a.newUser(u)
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", u.Name, err)
		}
		a.users[u.Name] = pu
		methods[pu.method]++
		if pu.method == config.AuthPassword {
			mockCleartext = mockCleartext && pu.cleartextWithoutTLS
		}
	}
	a.mock = passwordUser{method: config.AuthSCRAM, cleartextWithoutTLS: mockCleartext}
	for _, m := range []string{config.AuthMD5, config.AuthPassword} {
		if methods[m] > methods[a.mock.method] {
			a.mock.method = m
		}
	}
	return a, nil
}

func (a *PasswordAuth) newUser(u config.User) (passwordUser, error) {
	pu := passwordUser{
		id:                  Identity{User: u.Name, Tenant: u.Tenant, ReadOnly: u.ReadOnly, Admin: u.Admin},
		method:              u.AuthMethod(),
		cleartextWithoutTLS: u.AllowCleartextWithoutTLS,
	}
	// config.Load reads password_file into Password.
	sources := 0
	for _, s := range []string{u.Password, u.SCRAMVerifier, u.MD5Verifier} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		return pu, errors.New("want exactly one of password, scram_verifier and md5_verifier")
	}
	if u.AllowCleartextWithoutTLS && pu.method != config.AuthPassword {
		return pu, fmt.Errorf("allow_cleartext_without_tls needs auth %s", config.AuthPassword)
	}
	var err error
	switch pu.method {
	case config.AuthSCRAM:
		switch {
		case u.SCRAMVerifier != "":
			pu.scram, err = ParseSCRAMVerifier(u.SCRAMVerifier)
		case u.Password != "":
			pu.scram, err = newCredentials(u.Password)
		default:
			err = errors.New("an md5_verifier cannot be used with auth " + config.AuthSCRAM)
		}
	case config.AuthMD5:
		switch {
		case u.MD5Verifier != "":
			pu.md5, err = parseMD5Verifier(u.MD5Verifier)
		case u.Password != "":
			pu.md5 = md5Hex(u.Password, u.Name)
		default:
			err = errors.New("a scram_verifier cannot be used with auth " + config.AuthMD5)
		}
	case config.AuthPassword:
		switch {
		case u.SCRAMVerifier != "":
			pu.scram, err = ParseSCRAMVerifier(u.SCRAMVerifier)
		case u.MD5Verifier != "":
			pu.md5, err = parseMD5Verifier(u.MD5Verifier)
		default:
			pu.plainMAC = a.plainMAC(u.Password)
		}
	default:
		err = fmt.Errorf("unknown auth method %q", u.Auth)
	}
	return pu, err
}

func (a *PasswordAuth) plainMAC(password string) []byte {
	mac := hmac.New(sha256.New, a.mockKey)
	mac.Write([]byte(password))
	return mac.Sum(nil)
}

// md5Hex is PostgreSQL's md5 password digest: hex(md5(password || user)).
func md5Hex(password, user string) []byte {
	sum := md5.Sum([]byte(password + user))
	return hex.AppendEncode(nil, sum[:])
}

// parseMD5Verifier checks PostgreSQL's stored md5 format, "md5" followed by
// 32 lower-case hex digits, and returns the digits. Errors do not quote s.
func parseMD5Verifier(s string) ([]byte, error) {
	digest, ok := strings.CutPrefix(s, "md5")
	if !ok || len(digest) != 2*md5.Size || strings.ToLower(digest) != digest {
		return nil, errors.New("invalid md5 verifier: want md5 followed by 32 lower-case hex digits")
	}
	if _, err := hex.DecodeString(digest); err != nil {
		return nil, errors.New("invalid md5 verifier: want md5 followed by 32 lower-case hex digits")
	}
	return []byte(digest), nil
}

// MD5Verifier returns PostgreSQL's stored md5 password for user, for
// md5_verifier in the config. It depends on the user name: renaming the
// user invalidates it.
func MD5Verifier(password, user string) string {
	return "md5" + string(md5Hex(password, user))
}

// newCredentials derives SCRAM-SHA-256 credentials with a random salt.
func newCredentials(password string) (scram.StoredCredentials, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("salt: %w", err)
	}
	c, err := newSCRAMClient(password)
	if err != nil {
		return scram.StoredCredentials{}, err
	}
	creds, err := c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
	if err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("derive SCRAM keys: %w", err)
	}
	return creds, nil
}

// newSCRAMClient returns a client that derives keys from password. Like
// PostgreSQL (and libpq), it SASLpreps the password if it can be prepared
// and uses the raw bytes otherwise, so that any password a PostgreSQL
// client can send works.
func newSCRAMClient(password string) (*scram.Client, error) {
	c, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return scram.SHA256.NewClientUnprepped("", password, "")
	}
	return c, nil
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

// Authenticate runs the user's authentication method for the startup user.
// An unknown user is challenged with the method most configured users have
// and fails with the same error as a wrong password, after the client has
// answered. See Authenticator for the error contract.
func (a *PasswordAuth) Authenticate(c authConn, user string) (Identity, error) {
	u, known := a.users[user]
	if !known {
		u = a.mock
	}
	switch u.method {
	case config.AuthMD5:
		return a.authMD5(c, user, u, known)
	case config.AuthPassword:
		return a.authCleartext(c, user, u, known)
	}
	return a.authSCRAM(c, user, u, known)
}

// authSCRAM runs the SCRAM-SHA-256 exchange (RFC 5802 / 7677, no channel
// binding). On success it has sent AuthenticationSASL,
// AuthenticationSASLContinue, AuthenticationSASLFinal and AuthenticationOk.
// An unknown user goes through the same exchange against mock credentials
// and fails at the proof.
//
// As in PostgreSQL, the user name inside the SCRAM messages is ignored (libpq
// sends an empty one): the startup user is the one authenticated.
func (a *PasswordAuth) authSCRAM(c authConn, user string, u passwordUser, known bool) (Identity, error) {
	creds := u.scram
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
	msg, err := nextPasswordMessage(c, "SASL response")
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
	if msg, err = nextPasswordMessage(c, "SASL response"); err != nil {
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

// authMD5 runs PostgreSQL's md5 exchange: a random 4-byte salt, and the
// client answers "md5" || hex(md5(hex(md5(password || user)) || salt)). An
// unknown user gets a salt too, and fails once it has answered.
func (a *PasswordAuth) authMD5(c authConn, user string, u passwordUser, known bool) (Identity, error) {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return Identity{}, fmt.Errorf("md5 salt: %w", err)
	}
	if err := sendFlush(c, &pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return Identity{}, err
	}
	got, err := readPassword(c)
	if err != nil {
		return Identity{}, err
	}
	if !known {
		return Identity{}, passwordFailed(user, AuthReasonUnknownUser, errors.New("unknown user"))
	}
	sum := md5.Sum(append(append([]byte(nil), u.md5...), salt[:]...))
	want := "md5" + hex.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return Identity{}, passwordFailed(user, AuthReasonBadPassword, errors.New("md5 response does not match"))
	}
	if err := sendFlush(c, &pgproto3.AuthenticationOk{}); err != nil {
		return Identity{}, err
	}
	return u.id, nil
}

// authCleartext asks for the password in clear (AuthenticationCleartextPassword).
// Without TLS it refuses (28000) before the client sends anything, unless
// the user allows it: the password would cross the network readable.
func (a *PasswordAuth) authCleartext(c authConn, user string, u passwordUser, known bool) (Identity, error) {
	if !c.Encrypted() && !u.cleartextWithoutTLS {
		return Identity{}, &AuthError{
			SQLState: "28000", // invalid_authorization_specification, as a pg_hba rejection
			Message:  `pgmoat: password authentication for user "` + user + `" sends the password in clear and needs TLS; connect with sslmode=require or stronger`,
			Reason:   AuthReasonTLSRequired,
		}
	}
	if err := sendFlush(c, &pgproto3.AuthenticationCleartextPassword{}); err != nil {
		return Identity{}, err
	}
	got, err := readPassword(c)
	if err != nil {
		return Identity{}, err
	}
	if !known {
		return Identity{}, passwordFailed(user, AuthReasonUnknownUser, errors.New("unknown user"))
	}
	if got == "" { // PostgreSQL refuses it before looking at the credential
		return Identity{}, passwordFailed(user, AuthReasonBadPassword, errors.New("empty password"))
	}
	ok, err := a.checkPlain(u, user, got)
	if err != nil {
		return Identity{}, passwordFailed(user, AuthReasonBadPassword, err)
	}
	if !ok {
		return Identity{}, passwordFailed(user, AuthReasonBadPassword, errors.New("password does not match"))
	}
	if err := sendFlush(c, &pgproto3.AuthenticationOk{}); err != nil {
		return Identity{}, err
	}
	return u.id, nil
}

// checkPlain compares a cleartext password with whichever credential u has,
// in constant time.
func (a *PasswordAuth) checkPlain(u passwordUser, user, password string) (bool, error) {
	switch {
	case u.plainMAC != nil:
		return hmac.Equal(a.plainMAC(password), u.plainMAC), nil
	case u.md5 != nil:
		return subtle.ConstantTimeCompare(md5Hex(password, user), u.md5) == 1, nil
	}
	// A SCRAM verifier: derive the StoredKey from the password with its
	// salt and iterations (one PBKDF2 run), as PostgreSQL's
	// scram_verify_plain_password does.
	sc, err := newSCRAMClient(password)
	if err != nil {
		return false, err
	}
	creds, err := sc.GetStoredCredentialsWithError(u.scram.KeyFactors)
	if err != nil {
		return false, fmt.Errorf("derive SCRAM keys: %w", err)
	}
	return hmac.Equal(creds.StoredKey, u.scram.StoredKey), nil
}

// readPassword reads a PasswordMessage and returns the password.
func readPassword(c authConn) (string, error) {
	msg, err := nextPasswordMessage(c, "password response")
	if err != nil {
		return "", err
	}
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(msg[5:]); err != nil {
		return "", protocolError("invalid password packet", err)
	}
	return pm.Password, nil
}

// nextPasswordMessage reads the client's next message, which must be a
// password, SASL or GSS response ('p'); what names it in errors. The
// returned bytes are valid until the next read.
func nextPasswordMessage(c authConn, what string) ([]byte, error) {
	typ, msg, err := c.Next()
	switch {
	case errors.Is(err, errMessageTooLarge):
		return nil, protocolError("invalid "+what+" message", err)
	case err != nil:
		return nil, connError("read "+what, err)
	case typ != 'p':
		return nil, protocolError(fmt.Sprintf("expected %s, got message type %d", what, typ), nil)
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
