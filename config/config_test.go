package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// clearEnv blanks every PGMOAT_* variable inherited from the environment for
// the duration of the test (an empty variable is ignored by Load).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, EnvPrefix+"_") {
			t.Setenv(k, "")
		}
	}
}

// badFiles maps each testdata/*.bad.yaml to the substrings its error must
// contain; each names the offending key.
var badFiles = map[string][]string{
	"unknown_key":      {"listen_addr: unknown key"},
	"unknown_user_key": {"users[1].passwd: unknown key"},
	"bad_mode":         {`policy.mode: must be enforce or audit, not "permissive"`},
	"bad_relay":        {`relay: must be loop or goroutines, not "threads"`},
	"missing_dsn":      {"upstream.dsn: required"},
	"bad_dsn":          {"upstream.dsn: cannot parse", "invalid port"},
	"duplicate_user":   {`users[1].name: "acme_app" is already users[0]`},
	"tenant_quote":     {`users[0].tenant: "acme' OR '1'='1" is not a valid tenant`},
	"missing_tenant":   {"users[1].tenant: required"},
	"tenant_spellings": {
		`users[2].tenant: "07" and "7" are one tenant`,
		`users[4].tenant: "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11" and "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" are one tenant`,
		`users[5].tenant: "0x7" and "7" are one tenant`,
		`users[7].tenant: "1_000" and "1000" are one tenant`,
	},
	"two_password_sources":  {"users[0]: more than one credential is set (password, scram_verifier)"},
	"password_and_file":     {"users[0].password_file: set together with a password"},
	"no_password":           {"users[0]: no credential"},
	"missing_password_file": {"users[0].password_file: open ", "missing.pass"},
	"bad_verifier":          {"users[0].scram_verifier: ", "StoredKey is 8 bytes, want 32"},
	"bad_duration":          {`limits.auth_timeout: want a duration string such as "10s", got "15 seconds"`},
	"numeric_duration":      {`policy.catalog_refresh: want a duration string such as "10s", got 60`},
	"bad_listen":            {"listen: want host:port"},
	"bad_tenant_setting":    {`policy.tenant_setting: "tenant_id" is not a custom setting name`},
	"bad_tables": {
		"policy.shared[0].name: public.orders is already declared at policy.protected[0]",
		`policy.shared[1].name: "Weird Table" is not a name or schema.name`,
	},
	"bad_limit":                       {"limits.max_client_connections: must be positive"},
	"bad_idle_timeout":                {"limits.idle_timeout: must not be negative"},
	"bad_auth":                        {`users[0].auth: must be scram-sha-256, md5 or password, not "trust"`},
	"bad_md5_verifier":                {"users[0].md5_verifier: want md5 followed by 32 lower-case hex digits"},
	"md5_with_scram_verifier":         {"users[0].scram_verifier: cannot be used with auth md5"},
	"md5_verifier_with_scram":         {"users[0].md5_verifier: cannot be used with auth scram-sha-256"},
	"cleartext_without_password_auth": {"users[0].allow_cleartext_without_tls: applies only to auth password"},
	"bad_tls":                         {"tls: cert_file and key_file must be set together"},
	"tls_require_without_cert":        {"tls.require: needs tls.cert_file and tls.key_file"},
	"bad_yaml":                        {"parse YAML", "line 6"},
	"many": {
		"listen: want host:port",
		"upstream.dsn: required",
		"upstream.connect_timeout: must be positive",
		"users[0].name: required",
		`users[0].tenant: "a b" is not a valid tenant`,
		`log.level: must be debug, info, warn or error, not "loud"`,
		`log.format: must be json or text, not "xml"`,
	},
}

func TestLoadTestdata(t *testing.T) {
	clearEnv(t)
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, path := range files {
		name, bad := strings.CutSuffix(filepath.Base(path), ".bad.yaml")
		t.Run(filepath.Base(path), func(t *testing.T) {
			cfg, err := Load(path, nil)
			if !bad {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if err := cfg.Validate(); err != nil {
					t.Errorf("Validate after Load: %v", err)
				}
				return
			}
			seen[name] = true
			want, ok := badFiles[name]
			if !ok {
				t.Fatalf("no expectation in badFiles for %s", path)
			}
			if err == nil {
				t.Fatalf("Load succeeded, want an error containing %q", want)
			}
			for _, w := range want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q:\n%v", w, err)
				}
			}
			// Every line names the file.
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "config "+path+": ") {
					t.Errorf("error line does not name the file: %q", line)
				}
			}
		})
	}
	for name := range badFiles {
		if !seen[name] {
			t.Errorf("badFiles has %s but testdata/%s.bad.yaml does not exist", name, name)
		}
	}
}

func TestLoadDefaults(t *testing.T) {
	clearEnv(t)
	cfg, err := Load("testdata/minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Upstream.DSN = "postgres://pgmoat_app@127.0.0.1:5432/app"
	want.Users = []User{{Name: "acme_app", Password: "acme-secret", Tenant: "acme"}}
	checks := []struct {
		key       string
		got, want any
	}{
		{"listen", cfg.Listen, "127.0.0.1:6432"},
		{"metrics_listen", cfg.MetricsListen, "127.0.0.1:9930"},
		{"relay", cfg.Relay, RelayLoop},
		{"upstream.connect_timeout", cfg.Upstream.ConnectTimeout, 10 * time.Second},
		{"policy.mode", cfg.Policy.Mode, ModeEnforce},
		{"policy.tenant_setting", cfg.Policy.TenantSetting, "app.current_tenant_id"},
		{"policy.cache_size", cfg.Policy.CacheSize, 10000},
		{"policy.catalog_refresh", cfg.Policy.CatalogRefresh, 60 * time.Second},
		{"limits.max_client_connections", cfg.Limits.MaxClientConnections, 1000},
		{"limits.auth_timeout", cfg.Limits.AuthTimeout, 15 * time.Second},
		{"limits.max_message_size", cfg.Limits.MaxMessageSize, 64 << 20},
		{"limits.shutdown_timeout", cfg.Limits.ShutdownTimeout, 30 * time.Second},
		{"log.level", cfg.Log.Level, "info"},
		{"log.format", cfg.Log.Format, "json"},
		{"metrics.tenant_label_cap", cfg.Metrics.TenantLabelCap, 100},
		// Default() agrees with what Load produces.
		{"Default().Limits", cfg.Limits, want.Limits},
		{"Default().Policy.Mode", cfg.Policy.Mode, want.Policy.Mode},
		{"Default().Log", cfg.Log, want.Log},
		{"Default().Metrics", cfg.Metrics, want.Metrics},
		{"Default().Listen", cfg.Listen, want.Listen},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.key, c.got, c.want)
		}
	}
	if err := want.Validate(); err != nil {
		t.Errorf("Default() with a DSN and a user does not validate: %v", err)
	}
}

func TestLoadFull(t *testing.T) {
	clearEnv(t)
	cfg, err := Load("testdata/full.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Users[1]; got != (User{Name: "globex_reports", Password: "globex-secret", Tenant: "globex:eu-1", ReadOnly: true}) {
		t.Errorf("users[1] = %+v", got)
	}
	if !cfg.Users[2].Admin || cfg.Users[2].Tenant != "" {
		t.Errorf("users[2] = %+v, want an admin without tenant", cfg.Users[2])
	}
	if !slices.Equal(cfg.Policy.Protected, []string{"orders", "billing.invoices"}) {
		t.Errorf("policy.protected = %q", cfg.Policy.Protected)
	}
	if want := []SharedTable{{Name: "countries"}, {Name: "public.feature_flags", Writable: true}}; !slices.Equal(cfg.Policy.Shared, want) {
		t.Errorf("policy.shared = %+v, want %+v", cfg.Policy.Shared, want)
	}
	if !slices.Equal(cfg.Policy.Internal, []string{"audit.events"}) {
		t.Errorf("policy.internal = %q", cfg.Policy.Internal)
	}
	if want := []Function{{Name: "app.current_tenant"}, {Name: "billing.close_month", Trusted: true}}; !slices.Equal(cfg.Policy.AllowFunctions, want) {
		t.Errorf("policy.allow_functions = %+v, want %+v", cfg.Policy.AllowFunctions, want)
	}
	if cfg.Limits.ShutdownTimeout != 90*time.Second || cfg.Policy.CatalogRefresh != 5*time.Minute {
		t.Errorf("durations: shutdown_timeout %v catalog_refresh %v", cfg.Limits.ShutdownTimeout, cfg.Policy.CatalogRefresh)
	}
	if cfg.Policy.CacheSize != 0 || cfg.Policy.Mode != ModeAudit || cfg.Upstream.Password != "upstream-secret" {
		t.Errorf("policy %+v upstream %+v", cfg.Policy, cfg.Upstream)
	}
}

func TestLoadEnvAndFlags(t *testing.T) {
	clearEnv(t)
	t.Setenv("PGMOAT_LISTEN", "0.0.0.0:7000")
	t.Setenv("PGMOAT_POLICY_MODE", "audit")
	t.Setenv("PGMOAT_LIMITS_AUTH_TIMEOUT", "2s")
	t.Setenv("PGMOAT_POLICY_PROTECTED", "orders,billing.invoices")
	t.Setenv("PGMOAT_POLICY_INTERNAL", "audit.events")
	t.Setenv("PGMOAT_UPSTREAM_PASSWORD", "from-env")
	t.Setenv("PGMOAT_USERS_0_PASSWORD", "user-from-env")

	cfg, err := Load("testdata/minimal.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "0.0.0.0:7000" || cfg.Policy.Mode != ModeAudit || cfg.Limits.AuthTimeout != 2*time.Second {
		t.Errorf("env not applied: listen %q mode %q auth_timeout %v", cfg.Listen, cfg.Policy.Mode, cfg.Limits.AuthTimeout)
	}
	if !slices.Equal(cfg.Policy.Protected, []string{"orders", "billing.invoices"}) {
		t.Errorf("policy.protected = %q", cfg.Policy.Protected)
	}
	if !slices.Equal(cfg.Policy.Internal, []string{"audit.events"}) {
		t.Errorf("policy.internal = %q", cfg.Policy.Internal)
	}
	if cfg.Upstream.Password != "from-env" || cfg.Users[0].Password != "user-from-env" {
		t.Errorf("secrets from env: upstream %q user %q", cfg.Upstream.Password, cfg.Users[0].Password)
	}

	t.Run("flags beat env, unset flags do not apply", func(t *testing.T) {
		fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
		fs.String("listen", "", "")
		fs.String("policy-mode", "", "")
		fs.String("log-level", "error", "") // default only: must not apply
		fs.String("config", "", "")         // not a config key: ignored
		if err := fs.Parse([]string{"--listen", "127.0.0.1:7001", "--policy-mode", "enforce"}); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load("testdata/minimal.yaml", fs)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Listen != "127.0.0.1:7001" || cfg.Policy.Mode != ModeEnforce || cfg.Log.Level != "info" {
			t.Errorf("listen %q mode %q log.level %q", cfg.Listen, cfg.Policy.Mode, cfg.Log.Level)
		}
	})

	t.Run("bad env value names the key", func(t *testing.T) {
		t.Setenv("PGMOAT_POLICY_MODE", "bogus")
		t.Setenv("PGMOAT_POLICY_CATALOG_REFRESH", "soon")
		_, err := Load("testdata/minimal.yaml", nil)
		if err == nil || !strings.Contains(err.Error(), "policy.catalog_refresh: want a duration") {
			t.Errorf("err = %v, want policy.catalog_refresh", err)
		}
		t.Setenv("PGMOAT_POLICY_CATALOG_REFRESH", "")
		_, err = Load("testdata/minimal.yaml", nil)
		if err == nil || !strings.Contains(err.Error(), `policy.mode: must be enforce or audit, not "bogus"`) {
			t.Errorf("err = %v, want policy.mode", err)
		}
	})
}

func TestLoadPasswordFiles(t *testing.T) {
	clearEnv(t)
	t.Run("relative to the config file", func(t *testing.T) {
		cfg, err := Load("testdata/password_file.yaml", nil)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Upstream.Password != "upstream-from-file" || cfg.Users[0].Password != "acme-from-file" {
			t.Errorf("upstream %q user %q", cfg.Upstream.Password, cfg.Users[0].Password)
		}
		if cfg.Users[0].PasswordFile != "secrets/acme.pass" {
			t.Errorf("password_file not kept: %q", cfg.Users[0].PasswordFile)
		}
	})
	t.Run("absolute path, empty file", func(t *testing.T) {
		dir := t.TempDir()
		secret := filepath.Join(dir, "secret")
		empty := filepath.Join(dir, "empty")
		if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfgPath := filepath.Join(t.TempDir(), "pgmoat.yaml")
		yaml := "upstream:\n  dsn: postgres://u@localhost/db\n  password_file: " + secret +
			"\nusers:\n  - name: a\n    password_file: " + empty + "\n    tenant: acme\n"
		if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(cfgPath, nil)
		if err == nil || !strings.Contains(err.Error(), "users[0].password_file: file "+empty+" is empty") {
			t.Fatalf("err = %v, want users[0].password_file empty", err)
		}
		t.Setenv("PGMOAT_USERS_0_PASSWORD", "from-env") // with a password_file: refused
		_, err = Load(cfgPath, nil)
		if err == nil || !strings.Contains(err.Error(), "users[0].password_file: set together with a password") {
			t.Fatalf("err = %v, want password_file conflict", err)
		}
	})
}

func TestLoadMissingFile(t *testing.T) {
	clearEnv(t)
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path, nil)
	if err == nil || !strings.Contains(err.Error(), "config "+path+": open "+path) {
		t.Fatalf("err = %v, want one naming %s", err, path)
	}
}

func TestExampleConfig(t *testing.T) {
	clearEnv(t)
	cfg, err := Load("../deploy/pgmoat.example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The example documents the defaults: it must spell them as they are.
	def := Default()
	if cfg.Limits != def.Limits || cfg.Log != def.Log || cfg.Metrics != def.Metrics ||
		cfg.Listen != def.Listen || cfg.MetricsListen != def.MetricsListen ||
		cfg.Policy.Mode != def.Policy.Mode || cfg.Policy.TenantSetting != def.Policy.TenantSetting ||
		cfg.Policy.CacheSize != def.Policy.CacheSize || cfg.Policy.CatalogRefresh != def.Policy.CatalogRefresh ||
		cfg.Upstream.ConnectTimeout != def.Upstream.ConnectTimeout {
		t.Errorf("example differs from the defaults:\nexample %+v\ndefault %+v", cfg, def)
	}
}

func TestSCRAMVerifierFormat(t *testing.T) {
	const good = "SCRAM-SHA-256$4096:cGdtb2F0LWFjbWUtc2FsdA==$t/8u3lcOiFpvriCaOTpZWYtlipzvo3Mh+84S6XRvvUg=:l7aTmmN2lpjRfLZ0lIWUmHGYVUCk1N691LdjBVwpNuo="
	v, err := parseSCRAMVerifier(good)
	if err != nil {
		t.Fatal(err)
	}
	if v.Iterations != 4096 || string(v.Salt) != "pgmoat-acme-salt" || len(v.StoredKey) != 32 || len(v.ServerKey) != 32 {
		t.Errorf("parsed %+v", v)
	}

	const key = "t/8u3lcOiFpvriCaOTpZWYtlipzvo3Mh+84S6XRvvUg="
	for _, tc := range []struct{ name, in, want string }{
		{"md5", "md5" + strings.Repeat("0", 32), "want SCRAM-SHA-256$"},
		{"no keys", "SCRAM-SHA-256$4096:c2FsdA==", "want SCRAM-SHA-256$"},
		{"one key", "SCRAM-SHA-256$4096:c2FsdA==$" + key, "want SCRAM-SHA-256$"},
		{"zero iterations", "SCRAM-SHA-256$0:c2FsdA==$" + key + ":" + key, "iteration count"},
		{"bad salt", "SCRAM-SHA-256$4096:!!$" + key + ":" + key, "salt is not base64"},
		{"empty salt", "SCRAM-SHA-256$4096:$" + key + ":" + key, "salt is empty"},
		{"short server key", "SCRAM-SHA-256$4096:c2FsdA==$" + key + ":c2FsdA==", "ServerKey is 4 bytes, want 32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseSCRAMVerifier(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestValidateNames(t *testing.T) {
	base := func() *Config {
		c := Default()
		c.Upstream.DSN = "postgres://u@localhost/db"
		c.Users = []User{{Name: "a", Password: "p", Tenant: "acme"}}
		return c
	}
	for _, tc := range []struct {
		name   string
		modify func(*Config)
		want   string // "" means valid
	}{
		{"tenant with every allowed character", func(c *Config) { c.Users[0].Tenant = "Org_1.eu:x@y-z" }, ""},
		{"tenant of 63 characters", func(c *Config) { c.Users[0].Tenant = strings.Repeat("t", 63) }, ""},
		{"tenant of 64 characters", func(c *Config) { c.Users[0].Tenant = strings.Repeat("t", 64) }, "users[0].tenant"},
		{"tenant with backslash", func(c *Config) { c.Users[0].Tenant = `acme\` }, "users[0].tenant"},
		{"tenant with semicolon", func(c *Config) { c.Users[0].Tenant = "acme;reset" }, "users[0].tenant"},
		{"tenant starting with dash", func(c *Config) { c.Users[0].Tenant = "-acme" }, "users[0].tenant"},
		{"tenant non-ASCII", func(c *Config) { c.Users[0].Tenant = "acmé" }, "users[0].tenant"},
		{"admin with tenant", func(c *Config) { c.Users[0].Admin = true }, "users[0].tenant: must be empty for an admin"},
		{"admin without tenant", func(c *Config) { c.Users[0].Admin, c.Users[0].Tenant = true, "" }, ""},
		{"tenant setting with dollar", func(c *Config) { c.Policy.TenantSetting = "app.tenant$1" }, ""},
		{"tenant setting upper case", func(c *Config) { c.Policy.TenantSetting = "App.Tenant" }, "policy.tenant_setting"},
		{"tenant setting three parts", func(c *Config) { c.Policy.TenantSetting = "a.b.c" }, "policy.tenant_setting"},
		{"protected three parts", func(c *Config) { c.Policy.Protected = []string{"db.s.t"} }, "policy.protected[0]"},
		{"protected quoted", func(c *Config) { c.Policy.Protected = []string{`"Orders"`} }, "policy.protected[0]"},
		{"protected twice", func(c *Config) { c.Policy.Protected = []string{"orders", "public.orders"} }, "policy.protected[1]: public.orders is already declared"},
		{"internal and shared", func(c *Config) {
			c.Policy.Shared = []SharedTable{{Name: "audit"}}
			c.Policy.Internal = []string{"public.audit"}
		}, "policy.internal[0]: public.audit is already declared at policy.shared[0].name"},
		{"internal bad name", func(c *Config) { c.Policy.Internal = []string{"Audit"} }, "policy.internal[0]"},
		{"function bad name", func(c *Config) { c.Policy.AllowFunctions = []Function{{Name: "f()"}} }, "policy.allow_functions[0].name"},
		{"negative cache", func(c *Config) { c.Policy.CacheSize = -1 }, "policy.cache_size"},
		{"message size over 1 GiB", func(c *Config) { c.Limits.MaxMessageSize = 1<<30 + 1 }, "limits.max_message_size"},
		{"same listeners", func(c *Config) { c.MetricsListen = c.Listen }, "metrics_listen: must differ"},
		{"both listeners ephemeral", func(c *Config) { c.Listen, c.MetricsListen = "127.0.0.1:0", "127.0.0.1:0" }, ""},
		{"listen service name", func(c *Config) { c.Listen = "localhost:postgres" }, "listen: want host:port with a numeric port"},
		{"listen all interfaces", func(c *Config) { c.Listen = ":6432" }, ""},
		{"auth md5 with password", func(c *Config) { c.Users[0].Auth = AuthMD5 }, ""},
		{"auth password with md5 verifier", func(c *Config) {
			c.Users[0].Auth, c.Users[0].Password, c.Users[0].MD5Verifier = AuthPassword, "", "md5"+strings.Repeat("0", 32)
		}, ""},
		{"auth password without TLS", func(c *Config) { c.Users[0].Auth, c.Users[0].AllowCleartextWithoutTLS = AuthPassword, true }, ""},
		{"auth upper case", func(c *Config) { c.Users[0].Auth = "MD5" }, "users[0].auth"},
		{"password and md5 verifier", func(c *Config) { c.Users[0].Auth, c.Users[0].MD5Verifier = AuthMD5, "md5"+strings.Repeat("0", 32) }, "users[0]: more than one credential is set (password, md5_verifier)"},
		{"negative idle timeout", func(c *Config) { c.Limits.IdleTimeout = -time.Second }, "limits.idle_timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.modify(c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSlogLevel(t *testing.T) {
	for level, want := range map[string]string{"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR", "": "INFO"} {
		if got := (Log{Level: level}).SlogLevel().String(); got != want {
			t.Errorf("Log{Level: %q}.SlogLevel() = %s, want %s", level, got, want)
		}
	}
}
