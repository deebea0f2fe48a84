/**
 * Who may use the bridge: the `permissions.allowed_users` patterns.
 */

/**
 * Build the predicate for `permissions.allowed_users`.
 * @param patterns Matrix user ID patterns where `*` matches any run of characters
 *   (e.g. `@*:example.org`, `@alice:*`). An empty list allows the users of `serverName` only.
 * @param serverName the homeserver's server name
 * @returns a function telling whether a user ID may bridge
 */
export function makeAccessCheck(patterns: readonly string[], serverName: string): (userId: string) => boolean {
  const effective = patterns.length > 0 ? patterns : [`@*:${serverName}`];
  const regexes = effective.map(
    (p) => new RegExp("^" + p.split("*").map((part) => part.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")).join(".*") + "$"),
  );
  return (userId: string) => regexes.some((r) => r.test(userId));
}
