/**
 * A stand-in homeserver for tests of the bridge core that do not cross the Matrix boundary
 * (the inbound poster's choices, metrics): only the {@link MatrixActions} a test gives exist;
 * any other call throws, so a test never passes by a call it did not expect.
 * Tests that cross the boundary use the real Synapse (harness/synapse.ts).
 */
import type { HomeserverFailure, MatrixActions } from "../../src/bridge/ports.ts";
import type { InboundPoster } from "../../src/bridge/InboundPoster.ts";
import type { BridgeStore } from "../../src/store/Store.ts";

/** A homeserver error with an HTTP status (null: no answer at all, a network failure). */
export class FakeHttpError extends Error {
  readonly status: number | null;
  constructor(status: number | null, message: string) {
    super(message);
    this.status = status;
  }
}

/** `classifyError` for {@link FakeHttpError}: no status → temporary; any status → a refusal (`M_UNKNOWN`). */
export function fakeClassify(err: unknown): HomeserverFailure {
  const status = err instanceof FakeHttpError ? err.status : null;
  return { temporary: status === null, retryAfterMs: null, status, errcode: status ? "M_UNKNOWN" : null, message: (err as Error).message };
}

/**
 * A {@link MatrixActions} with only `known` (plus {@link fakeClassify} unless given), and
 * `extra` fields for the test to read (what it recorded).
 * @throws Error from any other member, naming it
 */
export function strictHomeserver<X extends object>(known: Partial<MatrixActions>, extra: X): MatrixActions & X {
  const actions: Partial<MatrixActions> = { classifyError: fakeClassify, ...known };
  const proxy = new Proxy(actions, {
    get(target, prop) {
      const f = target[prop as keyof MatrixActions];
      if (f === undefined) throw new Error(`the fake homeserver has no ${String(prop)}`);
      return f;
    },
  }) as MatrixActions;
  return Object.assign(proxy, extra);
}

/**
 * Run the poster until inbound row `rowId` is posted (at most `tries` × 25 ms), then stop it.
 * @returns the row's final state
 */
export async function postRow(poster: InboundPoster, store: BridgeStore, rowId: number, tries = 200): Promise<string | undefined> {
  poster.start();
  try {
    for (let i = 0; i < tries && (await store.getInbound(rowId))?.state !== "posted"; i++) await new Promise((r) => setTimeout(r, 25));
  } finally {
    await poster.stop();
  }
  return (await store.getInbound(rowId))?.state;
}
