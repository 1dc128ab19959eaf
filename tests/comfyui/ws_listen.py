"""Queue one API graph on a ComfyUI server and record what its websocket sends: progress events and previews.

Run with ComfyUI's own interpreter (it has aiohttp):
    python ws_listen.py http://127.0.0.1:PORT graph.json out.json
Writes {"prompt_id", "progress": [{"node", "value", "max"}], "previews": [[width, height]], "finished": bool}.
Previews are the binary PREVIEW_IMAGE frames (event 1, then the image type, then JPEG/PNG bytes).
"""

import asyncio
import io
import json
import struct
import sys
import uuid

import aiohttp
from PIL import Image

PREVIEW_IMAGE = 1


async def main(url: str, graph_path: str, out_path: str, timeout: float = 300.0) -> None:
    client_id = uuid.uuid4().hex
    record = {"progress": [], "previews": [], "finished": False}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            graph = json.loads(open(graph_path).read())
            async with session.post(f"{url}/prompt", json={"prompt": graph, "client_id": client_id}) as reply:
                record["prompt_id"] = prompt_id = (await reply.json())["prompt_id"]
            while True:
                msg = await asyncio.wait_for(ws.receive(), timeout)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    event, _kind = struct.unpack(">II", msg.data[:8])
                    if event == PREVIEW_IMAGE:
                        record["previews"].append(list(Image.open(io.BytesIO(msg.data[8:])).size))
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    body = data.get("data", {})
                    if data["type"] == "progress" and body.get("prompt_id") == prompt_id:
                        record["progress"].append({k: body[k] for k in ("node", "value", "max")})
                    elif data["type"] == "executing" and body.get("node") is None and body.get("prompt_id") == prompt_id:
                        record["finished"] = True
                        break
                    elif data["type"] in ("execution_error", "execution_interrupted"):
                        break
                else:
                    break
    with open(out_path, "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
