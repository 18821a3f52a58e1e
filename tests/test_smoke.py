import anyio
import httpx
import pytest


@pytest.mark.anyio
async def test_publish_then_long_poll(push_server):
    async with httpx.AsyncClient(base_url=push_server.url) as client:
        response = await client.post("/publisher/a", content=b"hi", headers={"content-type": "text/plain"})
        assert response.status_code == 202
        with anyio.fail_after(5):
            response = await client.get("/subscriber/a")
        assert response.status_code == 200
        assert response.content == b"hi"
        assert response.headers["etag"] == "0"
