package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix is the prefix of the environment variables that override
// configuration keys: key "upstream.dsn" is read from PGMOAT_UPSTREAM_DSN.
const EnvPrefix = "PGMOAT"

// defaults are applied before the file, the environment and the flags. A key
// without a default here (upstream.dsn, the lists) starts empty.
var defaults = map[string]any{
	"listen":                        "127.0.0.1:6432",
	"metrics_listen":                "127.0.0.1:9930",
	"relay":                         RelayLoop,
	"upstream.connect_timeout":      10 * time.Second,
	"policy.mode":                   ModeEnforce,
	"policy.tenant_setting":         "app.current_tenant_id",
	"policy.cache_size":             10000,
	"policy.catalog_refresh":        60 * time.Second,
	"limits.max_client_connections": 1000,
	"limits.max_tenant_connections": 0,
	"limits.auth_timeout":           15 * time.Second,
	"limits.max_message_size":       64 << 20,
	"limits.shutdown_timeout":       30 * time.Second,
	"log.level":                     "info",
	"log.format":                    "json",
	"log.audit_file":                "",
	"log.statement_max_length":      1024,
	"log.redact_literals":           false,
	"metrics.tenant_label_cap":      100,
	"metrics.pprof":                 false,
}

// Default returns the built-in defaults: the configuration an empty file
// would produce with no PGMOAT_* variables set. It is not valid as it stands
// (upstream.dsn is empty); tests start from it.
func Default() *Config {
	v := viper.New()
	for k, d := range defaults {
		v.SetDefault(k, d)
	}
	var c Config
	if err := v.Unmarshal(&c, decoderOptions(nil)); err != nil {
		panic("config: defaults do not decode: " + err.Error()) // a bug in this file
	}
	return &c
}

// Load reads the YAML file at path, applies the PGMOAT_* environment
// variables and then the flags in flags that are bound to configuration keys,
// reads the secret files, and validates the result.
//
// Precedence, lowest first: defaults, file, environment, flags. Every scalar
// key can be set from the environment as PGMOAT_ followed by the key in upper
// case with "." replaced by "_" (PGMOAT_LISTEN, PGMOAT_UPSTREAM_DSN,
// PGMOAT_POLICY_MODE; lists are comma-separated). A user's password can be
// supplied as PGMOAT_USERS_<i>_PASSWORD, where i is the user's index in the
// file. A flag binds to a key if its name is the key with "." and "_" replaced
// by "-" (--listen, --metrics-listen, --policy-mode); it takes effect only if
// it was set on the command line. flags may be nil.
//
// Decoding is strict: a key that pgmoat does not know, anywhere in the file
// (including inside a users entry), is an error. Relative paths in
// password_file keys are resolved against the directory of the config file.
// Every error names the file and the key, e.g.
// "config pgmoat.yaml: users[1].tenant: required"; when several keys are wrong,
// all are reported (joined with errors.Join, one per line).
func Load(path string, flags *pflag.FlagSet) (*Config, error) {
	c, err := load(path, flags)
	if err != nil {
		return nil, prefixed("config "+path+": ", err)
	}
	return c, nil
}

func load(path string, flags *pflag.FlagSet) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err // *PathError names the file
	}
	v := newViper()
	if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	if flags != nil {
		for _, key := range leafKeys() {
			if f := flags.Lookup(flagName(key)); f != nil {
				if err := v.BindPFlag(key, f); err != nil {
					return nil, fmt.Errorf("bind flag --%s: %w", f.Name, err)
				}
			}
		}
	}

	var c Config
	var md mapstructure.Metadata
	if err := v.Unmarshal(&c, decoderOptions(&md)); err != nil {
		return nil, decodeErrors(err)
	}
	if len(md.Unused) > 0 {
		sort.Strings(md.Unused)
		errs := make([]error, len(md.Unused))
		for i, k := range md.Unused {
			errs[i] = fmt.Errorf("%s: unknown key", k)
		}
		return nil, errors.Join(errs...)
	}

	secretsErr := c.resolveSecrets(filepath.Dir(path))
	if err := errors.Join(secretsErr, c.Validate()); err != nil {
		return nil, err
	}
	return &c, nil
}

// newViper returns a viper instance with the defaults and the environment
// bindings, but no file.
func newViper() *viper.Viper {
	v := viper.New()
	v.SetConfigType("yaml")
	for k, d := range defaults {
		v.SetDefault(k, d)
	}
	// Bind every scalar key explicitly rather than with AutomaticEnv: viper
	// only consults the environment for keys it already knows, and a key
	// with no default (upstream.dsn) would otherwise be invisible.
	for _, key := range leafKeys() {
		_ = v.BindEnv(key, envName(key)) // only fails without a key
	}
	return v
}

// envName is the environment variable that overrides key.
func envName(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// flagName is the command-line flag that overrides key.
func flagName(key string) string {
	return strings.NewReplacer(".", "-", "_", "-").Replace(key)
}

// leafKeys lists the dotted keys of Config that can be set from the
// environment or a flag: scalars and string lists. Lists of structs (users,
// policy.shared, policy.allow_functions) come only from the file.
func leafKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			f := t.Field(i)
			key := prefix + f.Tag.Get("mapstructure")
			switch {
			case f.Type.Kind() == reflect.Struct:
				walk(f.Type, key+".")
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
				// file only
			default:
				keys = append(keys, key)
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return keys
}

// decoderOptions makes viper's decoder record unknown keys in md (so they can
// be reported by their full path, users[1].bogus) and refuse bare numbers
// where a duration is expected.
func decoderOptions(md *mapstructure.Metadata) viper.DecoderConfigOption {
	return func(dc *mapstructure.DecoderConfig) {
		dc.Metadata = md
		dc.DecodeHook = mapstructure.ComposeDecodeHookFunc(
			durationHook,
			mapstructure.StringToSliceHookFunc(","),
		)
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// durationHook parses Go duration strings ("10s", "1m30s"). A bare number is
// refused: YAML "timeout: 10" would otherwise silently mean 10 nanoseconds.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType || from == durationType {
		return data, nil
	}
	s, ok := data.(string)
	if !ok {
		return nil, fmt.Errorf("want a duration string such as \"10s\", got %v", data)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, fmt.Errorf("want a duration string such as \"10s\", got %q", s)
	}
	return d, nil
}

// decodeErrors rewrites mapstructure's errors as one "key: problem" error
// per offending key.
func decodeErrors(err error) error {
	var out []error
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		case *mapstructure.DecodeError:
			inner := e.Unwrap()
			switch inner.(type) {
			case interface{ Unwrap() []error }, *mapstructure.DecodeError:
				walk(inner)
			default:
				out = append(out, fmt.Errorf("%s: %w", e.Name(), inner))
			}
		default:
			// Decoder.Decode wraps several errors in "decoding failed
			// due to the following error(s)"; look through it.
			if inner := errors.Unwrap(err); inner != nil {
				walk(inner)
				return
			}
			out = append(out, err)
		}
	}
	walk(err)
	return errors.Join(out...)
}

// resolveSecrets reads password files and PGMOAT_USERS_<i>_PASSWORD into the
// Password fields, and makes the TLS file names absolute. Relative file
// names are taken relative to dir. It refuses
// an inline (or environment) password together with a password_file, since
// after loading the two can no longer be told apart.
func (c *Config) resolveSecrets(dir string) error {
	var errs []error
	read := func(key string, file string, dst *string) {
		if file == "" {
			return
		}
		if *dst != "" {
			errs = append(errs, fmt.Errorf("%s: set together with a password; use one", key))
			return
		}
		if !filepath.IsAbs(file) {
			file = filepath.Join(dir, file)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", key, err))
			return
		}
		s := strings.TrimRight(string(b), "\r\n")
		if s == "" {
			errs = append(errs, fmt.Errorf("%s: file %s is empty", key, file))
			return
		}
		*dst = s
	}

	for _, f := range []*string{&c.TLS.CertFile, &c.TLS.KeyFile} {
		if *f != "" && !filepath.IsAbs(*f) {
			*f = filepath.Join(dir, *f)
		}
	}
	read("upstream.password_file", c.Upstream.PasswordFile, &c.Upstream.Password)
	for i := range c.Users {
		u := &c.Users[i]
		if p, ok := os.LookupEnv(fmt.Sprintf("%s_USERS_%d_PASSWORD", EnvPrefix, i)); ok && p != "" {
			u.Password = p
		}
		read(fmt.Sprintf("users[%d].password_file", i), u.PasswordFile, &u.Password)
	}
	return errors.Join(errs...)
}

// prefixed puts prefix in front of every error joined in err, so that each
// line of a multi-error names the file.
func prefixed(prefix string, err error) error {
	multi, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return fmt.Errorf("%s%w", prefix, err)
	}
	var errs []error
	for _, e := range multi.Unwrap() {
		errs = append(errs, prefixed(prefix, e))
	}
	return errors.Join(errs...)
}
