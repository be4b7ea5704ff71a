package config

import (
	"reflect"
	"slices"
	"strings"
)

// reloadable are the keys (or key prefixes) that a running pgmoat applies on
// a configuration reload; every other key takes effect only at startup.
// ApplyReload copies exactly these.
var reloadable = []string{
	"users",
	"policy.mode",
	"policy.protected",
	"policy.shared",
	"policy.internal",
	"policy.allow_functions",
	"policy.cache_size",
	"limits",
	"log.level",
}

// NeedsRestart reports whether a change to key (as Changes names it) takes
// effect only when pgmoat restarts. Keys not known to be reloadable need a
// restart: listen, metrics_listen, upstream.*, tls.*, policy.tenant_setting
// (the catalog and every open session depend on it), policy.catalog_refresh,
// log.format and metrics.*.
func NeedsRestart(key string) bool {
	for _, r := range reloadable {
		if key == r || strings.HasPrefix(key, r+".") {
			return false
		}
	}
	return true
}

// ApplyReload returns the configuration to run after a reload to next: a copy
// of c with the reloadable keys taken from next and every other key kept.
// Neither argument is modified; the result shares next's slices (a loaded
// Config is immutable).
func (c *Config) ApplyReload(next *Config) *Config {
	r := *c
	r.Users = next.Users
	r.Policy.Mode = next.Policy.Mode
	r.Policy.Protected = next.Policy.Protected
	r.Policy.Shared = next.Policy.Shared
	r.Policy.Internal = next.Policy.Internal
	r.Policy.AllowFunctions = next.Policy.AllowFunctions
	r.Policy.CacheSize = next.Policy.CacheSize
	r.Limits = next.Limits
	r.Log.Level = next.Log.Level
	return &r
}

// Changes lists, sorted, the dotted keys whose values differ between a and b.
// A list (users, policy.shared, policy.protected) is one key. It names keys
// only, never values: some are secrets.
func Changes(a, b *Config) []string {
	var keys []string
	var walk func(a, b reflect.Value, prefix string)
	walk = func(a, b reflect.Value, prefix string) {
		t := a.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name := f.Tag.Get("mapstructure")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			key := prefix + name
			if f.Type.Kind() == reflect.Struct {
				walk(a.Field(i), b.Field(i), key+".")
				continue
			}
			x, y := a.Field(i), b.Field(i)
			if x.Kind() == reflect.Slice && x.Len() == 0 && y.Len() == 0 {
				continue // nil and empty lists mean the same
			}
			if !reflect.DeepEqual(x.Interface(), y.Interface()) {
				keys = append(keys, key)
			}
		}
	}
	walk(reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem(), "")
	slices.Sort(keys)
	return keys
}
