package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

var (
	// tenantSettingRE is a custom GUC name. PostgreSQL accepts any
	// placeholder variable with a dot in its name (a prefix for an
	// extension), so the dot is required; both parts are kept to plain
	// identifiers so the name can be written into SQL unquoted.
	tenantSettingRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_$]*$`)

	// tenantRE bounds tenant identifiers. The tenant is written into SQL as a
	// string literal (SET LOCAL app.current_tenant_id = '<tenant>'), so this
	// character set is a security boundary, not a matter of taste: it admits
	// no quote, backslash, whitespace, semicolon or non-ASCII byte, so no
	// tenant value can end the literal or change its meaning in any client
	// encoding, whatever escaping the rewriter does on top. At most 63
	// characters, like a PostgreSQL identifier.
	tenantRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,62}$`)

	// identRE is one unquoted, already case-folded SQL identifier, as the
	// catalog stores it (at most 63 bytes: NAMEDATALEN-1).
	identRE = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

	// md5VerifierRE is PostgreSQL's stored md5 password format.
	md5VerifierRE = regexp.MustCompile(`^md5[0-9a-f]{32}$`)
)

// maxMessageSizeLimit is PostgreSQL's own bound on a protocol message (its
// buffers are limited to MaxAllocSize, 1 GB).
const maxMessageSizeLimit = 1 << 30

// Validate checks the configuration and returns every problem found, joined
// with errors.Join, each naming its key ("users[1].tenant: required"). It
// expects a Config as Load produces it: password files already read into
// Password. Load calls it; callers that build a Config in code should too.
func (c *Config) Validate() error {
	var p problems

	p.check("listen", validateListen(c.Listen))
	p.check("metrics_listen", validateListen(c.MetricsListen))
	if c.Listen != "" && c.Listen == c.MetricsListen && !strings.HasSuffix(c.Listen, ":0") {
		p.add("metrics_listen", "must differ from listen (%s)", c.Listen)
	}

	if c.Relay != RelayLoop && c.Relay != RelayGoroutines {
		p.add("relay", "must be %s or %s, not %q", RelayLoop, RelayGoroutines, c.Relay)
	}

	c.Upstream.validate(&p)
	c.TLS.validate(&p)
	c.validateUsers(&p)
	c.Policy.validate(&p)

	positive := func(key string, n int64) {
		if n <= 0 {
			p.add(key, "must be positive")
		}
	}
	positive("limits.max_client_connections", int64(c.Limits.MaxClientConnections))
	if c.Limits.MaxTenantConnections < 0 {
		p.add("limits.max_tenant_connections", "must not be negative (0 means no cap)")
	}
	positive("limits.auth_timeout", int64(c.Limits.AuthTimeout))
	positive("limits.max_message_size", int64(c.Limits.MaxMessageSize))
	if c.Limits.MaxMessageSize > maxMessageSizeLimit {
		p.add("limits.max_message_size", "must be at most %d (1 GiB, PostgreSQL's own limit)", maxMessageSizeLimit)
	}
	positive("limits.shutdown_timeout", int64(c.Limits.ShutdownTimeout))
	if c.Limits.IdleTimeout < 0 {
		p.add("limits.idle_timeout", "must not be negative (0 means no idle timeout)")
	}

	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		p.add("log.format", "must be json or text, not %q", c.Log.Format)
	}

	if c.Log.StatementMaxLength < 0 {
		p.add("log.statement_max_length", "must not be negative (0 logs no statement text)")
	}
	if c.Metrics.TenantLabelCap < 0 {
		p.add("metrics.tenant_label_cap", "must not be negative")
	}
	return errors.Join(p...)
}

// SlogLevel returns the slog level named by Level; Validate guarantees it is
// one of debug, info, warn, error.
func (l Log) SlogLevel() slog.Level {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.Level)); err != nil {
		return slog.LevelInfo
	}
	return lvl
}

// problems collects validation errors.
type problems []error

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
}

func (p *problems) check(key string, err error) {
	if err != nil {
		*p = append(*p, fmt.Errorf("%s: %w", key, err))
	}
}

// validateListen accepts host:port with a numeric port; an empty host means
// every interface, port 0 an ephemeral port (for tests).
func validateListen(addr string) error {
	if addr == "" {
		return errors.New("required")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("want host:port with a numeric port, got %q", addr)
	}
	return nil
}

func (u *Upstream) validate(p *problems) {
	if u.DSN == "" {
		p.add("upstream.dsn", "required")
	} else if _, err := pgconn.ParseConfig(u.DSN); err != nil {
		// pgconn redacts the password from its message.
		p.check("upstream.dsn", err)
	}
	if u.ConnectTimeout <= 0 {
		p.add("upstream.connect_timeout", "must be positive")
	}
}

func (t *TLS) validate(p *problems) {
	switch {
	case (t.CertFile == "") != (t.KeyFile == ""):
		p.add("tls", "cert_file and key_file must be set together")
	case t.Require && t.CertFile == "":
		p.add("tls.require", "needs tls.cert_file and tls.key_file")
	}
}

func (c *Config) validateUsers(p *problems) {
	seen := make(map[string]int, len(c.Users))
	spelled := map[string]string{} // tenantValue -> the first tenant with it
	for i, u := range c.Users {
		key := func(field string) string { return fmt.Sprintf("users[%d].%s", i, field) }

		switch first, dup := seen[u.Name]; {
		case u.Name == "":
			p.add(key("name"), "required")
		case dup:
			p.add(key("name"), "%q is already users[%d]", u.Name, first)
		default:
			seen[u.Name] = i
		}

		// PasswordFile has been read into Password by Load, so the two
		// count as one source here; Load refuses them together.
		var set []string
		for _, cred := range []struct{ name, value string }{
			{"password", u.Password + u.PasswordFile},
			{"scram_verifier", u.SCRAMVerifier},
			{"md5_verifier", u.MD5Verifier},
		} {
			if cred.value != "" {
				set = append(set, cred.name)
			}
		}
		switch {
		case len(set) > 1:
			p.add(fmt.Sprintf("users[%d]", i), "more than one credential is set (%s); use exactly one of password, password_file, scram_verifier and md5_verifier", strings.Join(set, ", "))
		case len(set) == 0:
			p.add(fmt.Sprintf("users[%d]", i), "no credential: set exactly one of password, password_file, scram_verifier and md5_verifier")
		}
		if u.SCRAMVerifier != "" {
			if _, err := parseSCRAMVerifier(u.SCRAMVerifier); err != nil {
				p.check(key("scram_verifier"), err)
			}
		}
		if u.MD5Verifier != "" && !md5VerifierRE.MatchString(u.MD5Verifier) {
			p.add(key("md5_verifier"), "want md5 followed by 32 lower-case hex digits: md5(password || user name), as PostgreSQL stores it")
		}
		switch u.AuthMethod() {
		case AuthSCRAM:
			if u.MD5Verifier != "" {
				p.add(key("md5_verifier"), "cannot be used with auth %s: set password or scram_verifier, or auth %s", AuthSCRAM, AuthMD5)
			}
		case AuthMD5:
			if u.SCRAMVerifier != "" {
				p.add(key("scram_verifier"), "cannot be used with auth %s: set password or md5_verifier", AuthMD5)
			}
		case AuthPassword:
		default:
			p.add(key("auth"), "must be %s, %s or %s, not %q", AuthSCRAM, AuthMD5, AuthPassword, u.Auth)
		}
		if u.AllowCleartextWithoutTLS && u.AuthMethod() != AuthPassword {
			p.add(key("allow_cleartext_without_tls"), "applies only to auth %s", AuthPassword)
		}

		switch {
		case u.Admin && u.Tenant != "":
			p.add(key("tenant"), "must be empty for an admin user (admins run without a tenant)")
		case u.Admin:
		case u.Tenant == "":
			p.add(key("tenant"), "required")
		case !tenantRE.MatchString(u.Tenant):
			p.add(key("tenant"), "%q is not a valid tenant: want 1-63 characters from A-Z a-z 0-9 _ . : @ -, starting with a letter or digit", u.Tenant)
		default:
			v := tenantValue(u.Tenant)
			if first, ok := spelled[v]; ok && first != u.Tenant {
				p.add(key("tenant"), "%q and %q are one tenant to a policy that casts the setting to an integer or uuid: write each tenant id one way", u.Tenant, first)
			} else if !ok {
				spelled[v] = u.Tenant
			}
		}
	}
}

// tenantValue is what a tenant id means to a policy that casts it to an
// integer or a uuid (whose input functions accept several spellings of one
// value: 07 and 7, and from PostgreSQL 16 0x7 and 1_000; upper- and
// lower-case hex): tenants with the same value would see each other's rows.
// Other ids are their own value.
func tenantValue(tenant string) string {
	digits, base := strings.ReplaceAll(tenant, "_", ""), 10
	if len(digits) > 2 && digits[0] == '0' {
		switch digits[1] {
		case 'x', 'X':
			digits, base = digits[2:], 16
		case 'o', 'O':
			digits, base = digits[2:], 8
		case 'b', 'B':
			digits, base = digits[2:], 2
		}
	}
	if n, err := strconv.ParseInt(digits, base, 64); err == nil {
		return "int:" + strconv.FormatInt(n, 10)
	}
	if h := strings.ToLower(strings.ReplaceAll(tenant, "-", "")); len(h) == 32 && strings.Trim(h, "0123456789abcdef") == "" {
		return "uuid:" + h
	}
	return "text:" + tenant
}

func (pol *Policy) validate(p *problems) {
	switch pol.Mode {
	case ModeEnforce, ModeAudit:
	default:
		p.add("policy.mode", "must be %s or %s, not %q", ModeEnforce, ModeAudit, pol.Mode)
	}
	if !tenantSettingRE.MatchString(pol.TenantSetting) {
		p.add("policy.tenant_setting", "%q is not a custom setting name: want prefix.name in lower case, e.g. app.current_tenant_id", pol.TenantSetting)
	}

	// A table is declared once, protected, shared or internal; "orders" and
	// "public.orders" are the same table.
	declared := make(map[string]string)
	declare := func(key, name string) {
		q, err := qualify(name)
		if err != nil {
			p.check(key, err)
			return
		}
		if prev, ok := declared[q]; ok {
			p.add(key, "%s is already declared at %s", q, prev)
			return
		}
		declared[q] = key
	}
	for i, name := range pol.Protected {
		declare(fmt.Sprintf("policy.protected[%d]", i), name)
	}
	for i, t := range pol.Shared {
		declare(fmt.Sprintf("policy.shared[%d].name", i), t.Name)
	}
	for i, name := range pol.Internal {
		declare(fmt.Sprintf("policy.internal[%d]", i), name)
	}
	funcs := make(map[string]string)
	for i, f := range pol.AllowFunctions {
		key := fmt.Sprintf("policy.allow_functions[%d].name", i)
		q, err := qualify(f.Name)
		if err != nil {
			p.check(key, err)
			continue
		}
		if prev, ok := funcs[q]; ok {
			p.add(key, "%s is already declared at %s", q, prev)
			continue
		}
		funcs[q] = key
	}

	if pol.CacheSize < 0 {
		p.add("policy.cache_size", "must not be negative")
	}
	if pol.CatalogRefresh <= 0 {
		p.add("policy.catalog_refresh", "must be positive")
	}
}

// qualify checks that name is "name" or "schema.name" with unquoted
// lower-case identifiers, and returns it schema-qualified (public by
// default).
func qualify(name string) (string, error) {
	parts := strings.Split(name, ".")
	ok := len(parts) <= 2
	for _, part := range parts {
		ok = ok && identRE.MatchString(part)
	}
	if !ok {
		return "", fmt.Errorf("%q is not a name or schema.name of lower-case SQL identifiers", name)
	}
	if len(parts) == 1 {
		return "public." + name, nil
	}
	return name, nil
}

// scramVerifier is a parsed SCRAM-SHA-256 password verifier, as stored in
// pg_authid.rolpassword. Validation only: the proxy derives its credentials
// with proxy.ParseSCRAMVerifier.
type scramVerifier struct {
	Iterations int
	Salt       []byte
	StoredKey  []byte // 32 bytes
	ServerKey  []byte // 32 bytes
}

// parseSCRAMVerifier parses PostgreSQL's verifier format,
// SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>,
// as produced by PostgreSQL's password hashing (select rolpassword from
// pg_authid). Errors never quote s: it is a secret.
func parseSCRAMVerifier(s string) (scramVerifier, error) {
	const format = "want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
	var v scramVerifier
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return v, errors.New(format)
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return v, errors.New(format)
	}
	iter, salt, ok1 := strings.Cut(params, ":")
	stored, server, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return v, errors.New(format)
	}
	n, err := strconv.Atoi(iter)
	if err != nil || n <= 0 {
		return v, fmt.Errorf("%s: iteration count %q is not a positive integer", format, iter)
	}
	v.Iterations = n
	for _, part := range []struct {
		name string
		text string
		dst  *[]byte
		size int // 0: any non-empty length
	}{
		{"salt", salt, &v.Salt, 0},
		{"StoredKey", stored, &v.StoredKey, 32},
		{"ServerKey", server, &v.ServerKey, 32},
	} {
		b, err := base64.StdEncoding.DecodeString(part.text)
		switch {
		case err != nil:
			return scramVerifier{}, fmt.Errorf("%s: %s is not base64: %w", format, part.name, err)
		case len(b) == 0:
			return scramVerifier{}, fmt.Errorf("%s: %s is empty", format, part.name)
		case part.size != 0 && len(b) != part.size:
			return scramVerifier{}, fmt.Errorf("%s: %s is %d bytes, want %d", format, part.name, len(b), part.size)
		}
		*part.dst = b
	}
	return v, nil
}
