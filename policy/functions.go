package policy

import (
	"fmt"
	"strings"
)

// deniedBuiltins are built-in functions tenants may not call, by name. They
// run SQL given as text or read relations named by a string (the policy
// cannot see what they touch), change settings, touch files or large
// objects, act on other backends of pgmoat's shared role, take advisory
// locks shared by all tenants, drive replication, or expose activity and
// statistics of other sessions.
var deniedBuiltins = setOf(
	"set_config",
	// SQL text or relations by name
	"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
	"table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
	"cursor_to_xml", "cursor_to_xmlschema",
	"schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
	"database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
	"ts_stat", "ts_rewrite", "pg_sequence_last_value", "setval",
	// files and server configuration
	"pg_stat_file", "pg_current_logfile", "pg_hba_file_rules", "pg_ident_file_mappings",
	"pg_show_all_file_settings", "pg_config", "lo_import", "lo_export", "loread", "lowrite",
	// backends and configuration
	"pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
	"pg_rotate_logfile", "pg_promote", "pg_log_backend_memory_contexts",
	"pg_get_backend_memory_contexts", "pg_get_shmem_allocations",
	// replication and WAL
	"pg_drop_replication_slot", "pg_switch_wal", "pg_create_restore_point",
	"pg_get_replication_slots", "pg_start_backup", "pg_stop_backup",
	// activity of other sessions
	"pg_blocking_pids", "pg_safe_snapshot_blocking_pids", "pg_isolation_test_session_is_blocked",
	"pg_lock_status", "pg_prepared_xact",
	// notifications: channels are shared by all tenants
	"pg_notify", "pg_notification_queue_usage",
	// commit times of every tenant's transactions
	"pg_last_committed_xact", "pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin",
	// sizes, which measure every tenant's rows together (planner
	// estimates, pg_class.reltuples and EXPLAIN's rows, stay visible)
	"pg_relation_size", "pg_table_size", "pg_indexes_size", "pg_total_relation_size",
	"pg_database_size", "pg_tablespace_size",
)

// deniedBuiltinPrefixes extend deniedBuiltins to families of functions.
var deniedBuiltinPrefixes = []string{
	"pg_read_", "pg_ls_", "pg_file_", // files
	"lo_",                              // large objects
	"pg_advisory_", "pg_try_advisory_", // advisory locks
	"pg_create_", "pg_copy_", "pg_logical_", "pg_replication_", "pg_backup_", "pg_wal_replay_", // replication, backup
	"pg_stat_",   // statistics and activity (pg_stat_get_*, pg_stat_reset*, ...)
	"pg_rotate_", // log files
}

// deniedAnywherePrefixes are extension functions refused in whatever schema
// the extension was installed.
var deniedAnywherePrefixes = []string{"dblink", "pg_stat_statements"}

func deniedBuiltin(name string) bool {
	if deniedBuiltins[name] {
		return true
	}
	for _, p := range deniedBuiltinPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// resolveFunction returns the "schema.name" a call resolves to and its
// catalog entry (nil if none). For an unqualified name: pg_catalog if it
// has the name and no other SearchPath schema has it too (an overload
// elsewhere might win: then the first other schema is returned, to be
// checked as a user function), else the first SearchPath schema that has it.
func (e *Engine) resolveFunction(schema, name string) (key string, fn *Function) {
	if schema != "" {
		key = schema + "." + name
		return key, e.cat.Functions[key]
	}
	var builtin *Function
	if f, ok := e.cat.Functions[pgCatalog+"."+name]; ok {
		builtin = f
	}
	for _, s := range e.cat.SearchPath {
		if s == pgCatalog {
			continue
		}
		if f, ok := e.cat.Functions[s+"."+name]; ok {
			return s + "." + name, f
		}
	}
	if builtin != nil {
		return pgCatalog + "." + name, builtin
	}
	return name, nil
}

// checkFunction decides whether a tenant may call the function named by
// schema (empty if unqualified) and name. It returns the resolved key and
// nil if allowed.
func (e *Engine) checkFunction(schema, name string) (string, *Violation) {
	for _, p := range deniedAnywherePrefixes {
		if strings.HasPrefix(name, p) {
			return name, deniedFunction(name, "it runs SQL or exposes other sessions")
		}
	}
	key, fn := e.resolveFunction(schema, name)
	if fn == nil && schema == "" {
		return key, newViolation(ReasonFunction, name,
			fmt.Sprintf("pgmoat: function %q is unknown", name),
			"if it was created after pgmoat started, reload pgmoat")
	}
	if isBuiltin(key, fn) {
		if deniedBuiltin(name) {
			return key, deniedFunction(key, "it can reach data, settings or sessions that row-level security does not protect")
		}
		if fn == nil {
			return key, newViolation(ReasonFunction, key,
				fmt.Sprintf("pgmoat: function %q is unknown", key), "")
		}
		return key, nil
	}
	return key, e.checkUserFunction(key, fn)
}

// isBuiltin reports whether the function key (fn its catalog entry, nil if
// none) is PostgreSQL's own: in a system schema, not an extension's (an
// extension can be installed into pg_catalog; its functions are then user
// functions all the same) and not SECURITY DEFINER (no built-in is).
func isBuiltin(key string, fn *Function) bool {
	s, _, _ := strings.Cut(key, ".")
	return isSystemSchema(s) && (fn == nil || !fn.Extension && !fn.SecurityDefiner)
}

// checkUserFunction decides a function outside the system schemas, or an
// extension's: it must
// be allowed by the configuration, and trusted if it is SECURITY DEFINER.
// A function without a catalog entry is allowed only if trusted.
func (e *Engine) checkUserFunction(key string, fn *Function) *Violation {
	trusted, allowed := e.allowFn[key]
	switch {
	case !allowed:
		return newViolation(ReasonFunction, key,
			fmt.Sprintf("pgmoat: function %q is not in pgmoat's allowed functions", key),
			"user functions can run any SQL; allow it in the configuration if it is safe for tenants")
	case fn == nil && !trusted:
		return newViolation(ReasonFunction, key,
			fmt.Sprintf("pgmoat: function %q is not in pgmoat's catalog", key),
			"if it was created after pgmoat started, reload pgmoat")
	case fn != nil && fn.SecurityDefiner && !trusted:
		return newViolation(ReasonFunction, key,
			fmt.Sprintf("pgmoat: function %q is SECURITY DEFINER and not declared trusted", key),
			"it runs with its owner's rights, which may bypass row-level security")
	}
	return nil
}

func deniedFunction(key, why string) *Violation {
	return newViolation(ReasonFunction, key, fmt.Sprintf("pgmoat: function %q is not allowed: %s", key, why), "")
}

// functionClass describes how the policy sees the function key (fn is its
// catalog entry, nil if none), for pgmoat explain.
func (e *Engine) functionClass(key string, fn *Function) string {
	schema, name, qualified := strings.Cut(key, ".")
	if !qualified {
		name = schema
	}
	for _, p := range deniedAnywherePrefixes {
		if strings.HasPrefix(name, p) {
			return "refused everywhere (runs SQL or exposes other sessions)"
		}
	}
	if qualified && isBuiltin(key, fn) {
		switch {
		case deniedBuiltin(name):
			return "built-in, refused"
		case fn == nil:
			return "unknown built-in"
		}
		return "built-in"
	}
	what := "user function"
	if fn != nil && fn.Kind == 'p' {
		what = "user procedure"
	}
	var traits []string
	if fn != nil {
		if fn.SecurityDefiner {
			traits = append(traits, "SECURITY DEFINER")
		}
		if fn.Volatile {
			traits = append(traits, "volatile")
		}
	} else {
		traits = append(traits, "not in the catalog")
	}
	trusted, allowed := e.allowFn[key]
	switch {
	case !allowed:
		traits = append(traits, "not allowed")
	case trusted:
		traits = append(traits, "allowed, trusted")
	default:
		traits = append(traits, "allowed")
	}
	return what + ", " + strings.Join(traits, ", ")
}
