// Package config is pgmoat's typed configuration: defaults, loading (YAML
// file, PGMOAT_* environment variables, flags), strict decoding and
// validation. viper is imported only in load.go.
package config

import "time"

// Config is the whole configuration. A loaded Config is immutable: a reload
// builds a new one and swaps it in.
type Config struct {
	Listen        string   `mapstructure:"listen"`         // client listener, default 127.0.0.1:6432
	MetricsListen string   `mapstructure:"metrics_listen"` // /metrics, /healthz, /readyz; default 127.0.0.1:9930
	Relay         string   `mapstructure:"relay"`          // RelayLoop (default) or RelayGoroutines
	Upstream      Upstream `mapstructure:"upstream"`
	TLS           TLS      `mapstructure:"tls"`
	Users         []User   `mapstructure:"users"`
	Policy        Policy   `mapstructure:"policy"`
	Limits        Limits   `mapstructure:"limits"`
	Log           Log      `mapstructure:"log"`
	Metrics       Metrics  `mapstructure:"metrics"`
}

// Upstream is the PostgreSQL server pgmoat connects to, as its own role.
type Upstream struct {
	// DSN in libpq form (URL or key=value), as pgconn.ParseConfig reads it.
	DSN string `mapstructure:"dsn"`
	// PasswordFile, if set, holds the upstream password (overrides the DSN's).
	// Load reads it into Password; a relative path is relative to the
	// config file's directory.
	PasswordFile string `mapstructure:"password_file"`
	// Password, if non-empty, is the upstream password and overrides the
	// DSN's. After Load it holds the contents of PasswordFile (trailing
	// newline removed) or the value of upstream.password / the environment
	// variable PGMOAT_UPSTREAM_PASSWORD; setting both password and
	// password_file is an error.
	Password string `mapstructure:"password"`
	// Database is the only database name clients may ask for; empty means
	// the DSN's database.
	Database       string        `mapstructure:"database"`
	ConnectTimeout time.Duration `mapstructure:"connect_timeout"` // default 10s
}

// TLS is how clients may encrypt their connection to pgmoat. Without a
// certificate pgmoat answers SSLRequest with 'N' (plaintext only).
type TLS struct {
	CertFile string `mapstructure:"cert_file"` // PEM certificate chain
	KeyFile  string `mapstructure:"key_file"`  // PEM private key
	// Require refuses clients that do not ask for TLS (SQLSTATE 28000).
	Require bool `mapstructure:"require"`
}

// Relay modes, the values of Config.Relay.
const (
	// RelayLoop relays plaintext tenant sessions on event loops, a few OS
	// threads waiting in epoll, as PgBouncer does; TLS and admin sessions,
	// and every session on a machine with one CPU or other than Linux,
	// relay with goroutines.
	RelayLoop = "loop"
	// RelayGoroutines relays every session with two goroutines on Go's
	// netpoller.
	RelayGoroutines = "goroutines"
)

// Client authentication methods, the values of User.Auth.
const (
	AuthSCRAM    = "scram-sha-256" // the default (an empty Auth means this)
	AuthMD5      = "md5"           // opt-in: needs the password or an md5 verifier
	AuthPassword = "password"      // cleartext; over TLS only unless AllowCleartextWithoutTLS
)

// User is one client login and the tenant it belongs to. Exactly one of
// Password, PasswordFile, SCRAMVerifier and MD5Verifier is set in the file;
// secrets may also come from the environment (PGMOAT_USERS_<i>_PASSWORD, i
// the index in users) or files. After Load, Password holds the plaintext
// password whether it came inline, from the environment or from
// PasswordFile (which is kept for reference), and is empty exactly when a
// verifier is set.
type User struct {
	Name          string `mapstructure:"name"`
	Password      string `mapstructure:"password"`
	PasswordFile  string `mapstructure:"password_file"`
	SCRAMVerifier string `mapstructure:"scram_verifier"` // SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>; not with auth md5
	// MD5Verifier is PostgreSQL's stored md5 password, "md5" followed by
	// hex(md5(password || name)); for auth md5 or password only.
	MD5Verifier string `mapstructure:"md5_verifier"`
	// Auth is how the client proves its password: AuthSCRAM (default),
	// AuthMD5 or AuthPassword. See AuthMethod.
	Auth string `mapstructure:"auth"`
	// AllowCleartextWithoutTLS lets an AuthPassword user send its password
	// over a plaintext connection; otherwise such a login without TLS is
	// refused (SQLSTATE 28000) before the password is asked for.
	AllowCleartextWithoutTLS bool   `mapstructure:"allow_cleartext_without_tls"`
	Tenant                   string `mapstructure:"tenant"` // required unless Admin
	ReadOnly                 bool   `mapstructure:"read_only"`
	Admin                    bool   `mapstructure:"admin"` // bypasses the policy and the tenant; every statement is audited
}

// AuthMethod is the user's authentication method: Auth, or AuthSCRAM when
// Auth is empty.
func (u User) AuthMethod() string {
	if u.Auth == "" {
		return AuthSCRAM
	}
	return u.Auth
}

// Policy modes.
const (
	ModeEnforce = "enforce" // block what the policy refuses
	ModeAudit   = "audit"   // allow it, but log and count what would be blocked
)

// Policy configures what tenants may run.
type Policy struct {
	Mode          string `mapstructure:"mode"`           // enforce (default) or audit
	TenantSetting string `mapstructure:"tenant_setting"` // default app.current_tenant_id
	// Protected tables declared in config ("schema.table" or "table" for
	// public): the operator vouches that their policies keep each tenant to
	// its rows where pgmoat cannot read that from them (a function that
	// returns the tenant, a citext column). They still need row-level
	// security enabled and forced, or they are treated as unprotected; both
	// are reported at startup.
	Protected []string `mapstructure:"protected"`
	// Shared tables: global, read-only unless Writable.
	Shared []SharedTable `mapstructure:"shared"`
	// Internal tables hold tenant rows that tenants must never reach
	// directly (e.g. an audit trail written by a job): refused to tenants
	// even if protected, and left out of pgmoat check.
	Internal []string `mapstructure:"internal"`
	// AllowFunctions lists user-defined functions tenants may call
	// ("schema.name"). SECURITY DEFINER functions need Trusted.
	AllowFunctions []Function `mapstructure:"allow_functions"`
	CacheSize      int        `mapstructure:"cache_size"` // decisions cached by text; default 10000
	// CatalogRefresh is how often the catalog snapshot is reloaded; default 60s.
	CatalogRefresh time.Duration `mapstructure:"catalog_refresh"`
}

// SharedTable is a table without tenant rows that every tenant may read.
type SharedTable struct {
	Name     string `mapstructure:"name"`
	Writable bool   `mapstructure:"writable"`
}

// Function is an allow-listed user-defined function or procedure.
type Function struct {
	Name    string `mapstructure:"name"`
	Trusted bool   `mapstructure:"trusted"` // allows SECURITY DEFINER
}

// Limits bounds what clients can cost.
type Limits struct {
	MaxClientConnections int `mapstructure:"max_client_connections"` // default 1000
	// MaxTenantConnections caps the client connections of one tenant, so
	// that one tenant cannot take every connection; 0 means no cap.
	MaxTenantConnections int           `mapstructure:"max_tenant_connections"`
	AuthTimeout          time.Duration `mapstructure:"auth_timeout"`     // default 15s
	MaxMessageSize       int           `mapstructure:"max_message_size"` // bytes; default 64 MiB
	ShutdownTimeout      time.Duration `mapstructure:"shutdown_timeout"` // default 30s
	// IdleTimeout closes a client that sends nothing for this long while
	// its session is idle (no transaction open, no reply pending), with
	// SQLSTATE 57P05 as PostgreSQL's idle_session_timeout; 0 (the default)
	// means never. A client inside a transaction is not affected.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
}

// Log configures the process log and the audit log.
type Log struct {
	Level  string `mapstructure:"level"`  // debug, info (default), warn, error
	Format string `mapstructure:"format"` // json (default) or text
	// AuditFile receives the audit log (one JSON object per line), opened
	// append-only with mode 0600 and opened again on SIGHUP (log rotation).
	// Empty (the default) means standard error,
	// next to the process log, with each line tagged "log":"audit".
	AuditFile string `mapstructure:"audit_file"`
	// StatementMaxLength bounds the statement text in an audit line, in
	// bytes; longer texts are cut and marked "truncated". 0 logs no text.
	// Default 1024.
	StatementMaxLength int `mapstructure:"statement_max_length"`
	// RedactLiterals replaces the constants of the logged statements by
	// $1, $2, ... (pg_query normalize). Default false.
	RedactLiterals bool `mapstructure:"redact_literals"`
}

// Metrics configures the Prometheus metrics.
type Metrics struct {
	// TenantLabelCap bounds the distinct tenant label values; the rest are
	// counted as "other". Default 100.
	TenantLabelCap int `mapstructure:"tenant_label_cap"`
	// Pprof serves Go's profiler at /debug/pprof/ on metrics_listen.
	// Default false.
	Pprof bool `mapstructure:"pprof"`
}
