/** A minimal SSE reader for tests: yields parsed events from a fetch response. */
export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

export async function* readSse(res: Response): AsyncGenerator<SseEvent> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const ev: SseEvent = { event: 'message', data: '' };
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (field === 'event') ev.event = value;
        else if (field === 'data') data.push(value);
        else if (field === 'id') ev.id = value;
      }
      if (data.length === 0 && ev.event === 'message') continue;
      ev.data = data.join('\n');
      yield ev;
    }
  }
}
