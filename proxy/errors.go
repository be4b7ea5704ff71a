package proxy

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// clientError is an error the client receives as an ErrorResponse before its
// connection is closed. It is the one place where internal errors become
// client errors: the message says what happened without leaking internals
// (the cause is logged, never sent).
type clientError struct {
	code    string // SQLSTATE
	message string
	hint    string
	result  string // pgmoat_client_connections_total result label
	cause   error
}

func (e *clientError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s (%s): %v", e.message, e.code, e.cause)
	}
	return fmt.Sprintf("%s (%s)", e.message, e.code)
}

func (e *clientError) Unwrap() error { return e.cause }

func protocolViolation(format string, args ...any) *clientError {
	return &clientError{code: "08P01", message: fmt.Sprintf(format, args...), result: ResultProtocolError}
}

// fatal turns any session error into the FATAL ErrorResponse to send.
func fatal(err error) *pgproto3.ErrorResponse {
	var ce *clientError
	if !errors.As(err, &ce) {
		ce = &clientError{code: "08006", message: "pgmoat: connection failure"}
	}
	return &pgproto3.ErrorResponse{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                ce.code,
		Message:             ce.message,
		Hint:                ce.hint,
	}
}

// resultOf is the connection result label for a session that ended with err.
func resultOf(err error) string {
	var ce *clientError
	var ae *AuthError
	switch {
	case err == nil:
		return ResultOK
	case errors.As(err, &ae):
		return ResultAuthFailed
	case errors.As(err, &ce) && ce.result != "":
		return ce.result
	default:
		return ResultOK
	}
}
