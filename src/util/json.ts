/**
 * A peer's JSON body read as an object: the one place that decides what "not a JSON object"
 * means for answers the bridge reads from homeservers and HTTP clients.
 */

/**
 * `text` parsed as a JSON object.
 * @param text a response or request body (UTF-8 decoded)
 * @returns the object, or null when `text` is not JSON, or is JSON but not an object (an
 *   array, a string, `null`): the caller reports that answer as "not a JSON object"
 */
export function jsonObject(text: string): Record<string, unknown> | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null; // not JSON: the documented "not a JSON object" answer
  }
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
}
