/** The source-side page server (CRIU page-server protocol, lazy sessions). */
export { startPageServer, type PageServer, type PageServerOptions } from './server.js';
export type { PageServerEvent, PageServerEventHandler, SessionEndReason } from './events.js';
export type { TlsFiles } from './tls.js';
