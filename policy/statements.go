package policy

import (
	"strings"
	"unicode"
)

// statementTags names statements whose protobuf name does not read as
// their SQL command.
var statementTags = map[string]string{
	"CreateStmt":                 "CREATE TABLE",
	"CreateTableAsStmt":          "CREATE TABLE AS / CREATE MATERIALIZED VIEW",
	"ViewStmt":                   "CREATE VIEW",
	"IndexStmt":                  "CREATE INDEX",
	"RuleStmt":                   "CREATE RULE",
	"CreateTrigStmt":             "CREATE TRIGGER",
	"CreateFunctionStmt":         "CREATE FUNCTION/PROCEDURE",
	"DefineStmt":                 "CREATE AGGREGATE/OPERATOR/TYPE",
	"CreatedbStmt":               "CREATE DATABASE",
	"DropdbStmt":                 "DROP DATABASE",
	"CreateSeqStmt":              "CREATE SEQUENCE",
	"AlterSeqStmt":               "ALTER SEQUENCE",
	"CreateSchemaStmt":           "CREATE SCHEMA",
	"CreatePLangStmt":            "CREATE LANGUAGE",
	"CreateRoleStmt":             "CREATE ROLE/USER",
	"AlterRoleStmt":              "ALTER ROLE/USER",
	"AlterRoleSetStmt":           "ALTER ROLE ... SET",
	"AlterDatabaseSetStmt":       "ALTER DATABASE ... SET",
	"DropRoleStmt":               "DROP ROLE/USER",
	"GrantStmt":                  "GRANT/REVOKE",
	"GrantRoleStmt":              "GRANT/REVOKE of a role",
	"RenameStmt":                 "ALTER ... RENAME",
	"AlterObjectSchemaStmt":      "ALTER ... SET SCHEMA",
	"AlterOwnerStmt":             "ALTER ... OWNER",
	"CommentStmt":                "COMMENT",
	"SecLabelStmt":               "SECURITY LABEL",
	"ReassignOwnedStmt":          "REASSIGN OWNED",
	"DropOwnedStmt":              "DROP OWNED",
	"CompositeTypeStmt":          "CREATE TYPE",
	"CreateEnumStmt":             "CREATE TYPE AS ENUM",
	"CreateRangeStmt":            "CREATE TYPE AS RANGE",
	"CheckPointStmt":             "CHECKPOINT",
	"RefreshMatViewStmt":         "REFRESH MATERIALIZED VIEW",
	"VacuumStmt":                 "VACUUM/ANALYZE",
	"DoStmt":                     "DO",
	"DropStmt":                   "DROP",
	"AlterTableStmt":             "ALTER TABLE",
	"AlterSystemStmt":            "ALTER SYSTEM",
	"ImportForeignSchemaStmt":    "IMPORT FOREIGN SCHEMA",
	"AlterDefaultPrivilegesStmt": "ALTER DEFAULT PRIVILEGES",
	"CreatePolicyStmt":           "CREATE POLICY",
	"AlterPolicyStmt":            "ALTER POLICY",
	"CreateEventTrigStmt":        "CREATE EVENT TRIGGER",
	"CreateExtensionStmt":        "CREATE EXTENSION",
	"TransactionStmt":            "two-phase commit",
}

// statementTag turns a statement's protobuf name into a readable command,
// e.g. "AlterTableStmt" -> "ALTER TABLE".
func statementTag(name string) string {
	if tag, ok := statementTags[name]; ok {
		return tag
	}
	var b strings.Builder
	for i, r := range strings.TrimSuffix(name, "Stmt") {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte(' ')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// ddlStatements are DDL statements whose name does not start with Create,
// Alter or Drop.
var ddlStatements = setOf("GrantStmt", "GrantRoleStmt", "RenameStmt", "CommentStmt", "SecLabelStmt",
	"ReassignOwnedStmt", "DefineStmt", "IndexStmt", "ViewStmt", "RuleStmt", "CompositeTypeStmt",
	"ImportForeignSchemaStmt")

// isDDL reports whether a refused statement is DDL (ReasonDDL) rather than
// another utility statement (ReasonStatement).
func isDDL(name string) bool {
	if ddlStatements[name] {
		return true
	}
	for _, p := range []string{"Create", "Alter", "Drop"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
