/**
 * Errors a user can act on. Anything that is a `UserError` is printed by the CLI as one line
 * (no stack trace) and ends the command with exit code 1; anything else is a bug.
 */
export class UserError extends Error {
  override name = 'UserError';
  /** Short machine-readable code, e.g. `EBADIMAGE`, `EOPTION`. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * How the CLI shows a UserError: its message, then its code in parentheses, the same code the
 * library's error carries and `daemon --events` writes (the README lists them all).
 */
export function describeUserError(e: UserError): string {
  return `${e.message} (${e.code})`;
}
