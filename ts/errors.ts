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
