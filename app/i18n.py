"""Bilingual (English / Chinese) texts of messages computed on the server: errors, status lines."""

from __future__ import annotations

LANGUAGES = ("en", "zh")

MESSAGES: dict[str, dict[str, str]] = {
    "queue_full": {
        "en": "The server is busy: the queue is full ({size} jobs waiting). Please try again in a moment.",
        "zh": "服务器繁忙：队列已满（{size} 个任务在等待）。请稍后再试。",
    },
    "loading": {
        "en": "The model is still loading and warming up. Please try again in a moment.",
        "zh": "模型仍在加载和预热中，请稍后再试。",
    },
    "weights_missing": {
        "en": "Model weights not found. Looked in: {path}. {detail} Get them with "
        "`.venv/bin/python scripts/download_weights.py` from the repository folder, or run "
        "`bash scripts/setup_and_start.sh` again (or point ZIMAGE_WEIGHTS_DIR at a folder that holds "
        "z_image_turbo_bf16.safetensors, qwen_3_4b.safetensors, ae.safetensors and tokenizer/, "
        "or a Hugging Face snapshot), then restart the service.",
        "zh": "未找到模型权重。查找位置：{path}。{detail} 请在仓库目录运行 `.venv/bin/python scripts/download_weights.py` "
        "下载，或重新运行 `bash scripts/setup_and_start.sh`"
        "（或将 ZIMAGE_WEIGHTS_DIR 指向包含 z_image_turbo_bf16.safetensors、qwen_3_4b.safetensors、"
        "ae.safetensors 和 tokenizer/ 的文件夹，或 Hugging Face 快照目录），然后重启服务。",
    },
    "load_failed": {
        "en": "The model failed to load: {detail}",
        "zh": "模型加载失败：{detail}",
    },
    "device_failed": {
        "en": "The GPU reported a fatal error ({detail}). The service needs a restart; the supervisor restarts "
        "it when /health/live fails.",
        "zh": "GPU 报告了致命错误（{detail}）。服务需要重启；/health/live 失败后 supervisor 会自动重启它。",
    },
    "replica_failed": {
        "en": "The GPU replica running this job stopped ({detail}). Ray Serve starts a new one; please try again.",
        "zh": "运行此任务的 GPU 副本已停止（{detail}）。Ray Serve 会启动新的副本，请重试。",
    },
    "no_replicas": {
        "en": "No engine replica is running (replicas by state: {replicas}). Ray Serve is starting or replacing "
        "them, and jobs wait until one is up. If this lasts, the cluster has no room for a replica "
        "({gpus} GPU each): run `ray status` to see its free GPUs, then add a GPU node or lower "
        "ray_max_replicas or ray_gpus_per_replica; the replicas' errors are in "
        "/tmp/ray/session_latest/logs/serve/ on their node.",
        "zh": "当前没有正在运行的引擎副本（各状态副本数：{replicas}）。Ray Serve 正在启动或替换副本，任务会等待直到有副本可用。"
        "如果长时间如此，说明集群没有足够资源启动副本（每个副本需要 {gpus} 张 GPU）：运行 `ray status` 查看空闲 GPU，"
        "然后添加 GPU 节点，或调低 ray_max_replicas 或 ray_gpus_per_replica；副本的错误日志在其所在节点的 "
        "/tmp/ray/session_latest/logs/serve/ 中。",
    },
    "ray_auth": {
        "en": "The Ray cluster at {address} refused this app: it requires its auth token. Copy the head's "
        "~/.ray/auth_token to the same place on this machine (or point RAY_AUTH_TOKEN_PATH at it), start the app "
        "with RAY_AUTH_MODE=token in its environment, and restart it; on the head machine itself, "
        "ray_address = \"auto\" finds the token on its own.",
        "zh": "位于 {address} 的 Ray 集群拒绝了本应用：它要求认证令牌。请把头节点的 ~/.ray/auth_token 复制到本机相同位置"
        "（或用 RAY_AUTH_TOKEN_PATH 指向它），在应用的环境变量中设置 RAY_AUTH_MODE=token，然后重启应用；"
        "在头节点本机上，ray_address = \"auto\" 会自动找到令牌。",
    },
    "shutting_down": {
        "en": "The server is shutting down and accepts no new jobs.",
        "zh": "服务器正在关闭，不再接受新任务。",
    },
    "prompt_empty": {
        "en": "The prompt is empty. Describe the image you want.",
        "zh": "提示词为空，请描述想要生成的图像。",
    },
    "prompt_too_long": {
        "en": "The prompt is too long: {tokens} tokens, the limit is {limit}. Shorten it.",
        "zh": "提示词过长：{tokens} 个 token，上限为 {limit}。请缩短提示词。",
    },
    "negative_prompt_too_long": {
        "en": "The negative prompt is too long: {tokens} tokens, the limit is {limit}. Shorten it.",
        "zh": "反向提示词过长：{tokens} 个 token，上限为 {limit}。请缩短反向提示词。",
    },
    "negative_prompt_too_many_chars": {
        "en": "The negative prompt is too long: {chars} characters, the limit is {limit}. Shorten it.",
        "zh": "反向提示词过长：{chars} 个字符，上限为 {limit}。请缩短反向提示词。",
    },
    "text_not_unicode": {
        "en": "{field} contains a character that is not valid Unicode (a lone UTF-16 surrogate such as \\ud800). "
        "Send the text as UTF-8.",
        "zh": "{field} 含有无效的 Unicode 字符（单独的 UTF-16 代理项，如 \\ud800）。请以 UTF-8 发送文本。",
    },
    "body_too_complex": {
        "en": "The request body has too many JSON items ({count}; a request has at most {limit}). "
        "Send one request with its fields, at most {loras} LoRAs.",
        "zh": "请求体中的 JSON 元素过多（{count} 个；一个请求最多 {limit} 个）。每个请求最多 {loras} 个 LoRA。",
    },
    "reference_aspect": {
        "en": "The {field} is {width}x{height}: cropping it to {target_width}x{target_height} would keep only "
        "1/{ratio:.0f} of it (the limit is 1/{limit:g}). Crop the image closer to the output's shape first.",
        "zh": "{field} 为 {width}x{height}：裁剪到 {target_width}x{target_height} 只会保留约 1/{ratio:.0f}"
        "（上限为 1/{limit:g}）。请先把图片裁剪得更接近输出的宽高比。",
    },
    "prompt_too_many_chars": {
        "en": "The prompt is too long: {chars} characters, the limit is {limit}. Shorten it.",
        "zh": "提示词过长：{chars} 个字符，上限为 {limit}。请缩短提示词。",
    },
    "size_out_of_range": {
        "en": "{field} must be a multiple of 16 between {min} and {max}; got {value}.",
        "zh": "{field} 必须是 16 的倍数，且在 {min} 到 {max} 之间；当前为 {value}。",
    },
    "size_format": {
        "en": "size must look like \"1024x1024\" (width x height); got {value!r}.",
        "zh": "size 的格式应为 \"1024x1024\"（宽 x 高）；当前为 {value!r}。",
    },
    "out_of_range": {
        "en": "{field} must be between {min} and {max}; got {value}.",
        "zh": "{field} 必须在 {min} 到 {max} 之间；当前为 {value}。",
    },
    "not_a_choice": {
        "en": "{field} must be one of {choices}; got {value!r} ({default} is the default).",
        "zh": "{field} 必须是以下之一：{choices}；当前为 {value!r}（默认为 {default}）。",
    },
    "invalid_value": {
        "en": "Invalid value for {field}: {detail}",
        "zh": "{field} 的值无效：{detail}",
    },
    "not_an_image": {
        "en": "The uploaded {field} is not an image that can be read (use PNG, JPEG or WebP).",
        "zh": "上传的 {field} 不是可读取的图片（请使用 PNG、JPEG 或 WebP）。",
    },
    "bad_base64": {
        "en": "{field} must be a base64-encoded image (optionally a data: URL).",
        "zh": "{field} 必须是 base64 编码的图片（可带 data: URL 前缀）。",
    },
    "upload_too_large": {
        "en": "The uploaded {field} is too large: {size} bytes, the limit is {limit} bytes.",
        "zh": "上传的 {field} 太大：{size} 字节，上限为 {limit} 字节。",
    },
    "upload_too_many_pixels": {
        "en": "The uploaded {field} has too many pixels: {pixels}, the limit is {limit} pixels. Resize it first.",
        "zh": "上传的 {field} 像素过多：{pixels}，上限为 {limit} 像素。请先缩小图片。",
    },
    "invalid_json": {
        "en": "The request body is not valid JSON: {detail}",
        "zh": "请求体不是有效的 JSON：{detail}",
    },
    "unknown_field": {
        "en": "Unknown field {field!r}; remove it. Accepted fields: {accepted}.",
        "zh": "未知字段 {field!r}，请删除它。可接受的字段：{accepted}。",
    },
    "missing_field": {
        "en": "The field {field!r} is required.",
        "zh": "缺少必填字段 {field!r}。",
    },
    "wrong_type": {
        "en": "The field {field!r} has the wrong type: {detail}",
        "zh": "字段 {field!r} 的类型错误：{detail}",
    },
    "lora_not_found": {
        "en": "LoRA {name!r} was not found in {folder}. Available: {available}.",
        "zh": "在 {folder} 中找不到 LoRA {name!r}。可用：{available}。",
    },
    "multipart_required": {
        "en": "POST /v1/images/edits takes multipart/form-data (image and mask files, prompt, n, size), as OpenAI's "
        "images.edit sends it; got {content_type!r}.",
        "zh": "POST /v1/images/edits 需要 multipart/form-data（image 与 mask 文件、prompt、n、size），与 OpenAI 的 "
        "images.edit 相同；收到的是 {content_type!r}。",
    },
    "invalid_form": {
        "en": "The multipart form is invalid ({field}): {detail}",
        "zh": "multipart 表单无效（{field}）：{detail}",
    },
    "controlnet_not_found": {
        "en": "ControlNet {name!r} ({field}) was not found in {folder}. Available: {available}.",
        "zh": "在 {folder} 中找不到 ControlNet {name!r}（{field}）。可用：{available}。",
    },
    "lora_duplicate": {
        "en": "LoRA {name!r} is chosen more than once. Choose it once and set its strength instead.",
        "zh": "LoRA {name!r} 被选择了不止一次。请只选一次，并用它的强度调节效果。",
    },
    "lora_rejected": {
        "en": "The LoRA could not be applied; the model is unchanged. {detail}",
        "zh": "无法应用该 LoRA，模型保持不变。原因（英文）：{detail}",
    },
    "recipe_controlnet_missing": {
        "en": "ControlNet {name!r} used for this image is not in the ControlNet folder ({folder}), so none is "
        "chosen. Put the file back there (and the control image in the Control panel) to make the same image.",
        "zh": "生成这张图片时使用的 ControlNet {name!r} 不在 ControlNet 文件夹（{folder}）中，已设为无。"
        "请把该文件放回该文件夹（并在控制面板中放入控制图），才能生成相同的图片。",
    },
    "recipe_lora_missing": {
        "en": "LoRA {name!r} used for this image is not in the LoRA folder ({folder}), so it was left out. "
        "Put the file back there to make the same image.",
        "zh": "生成这张图片时使用的 LoRA {name!r} 不在 LoRA 文件夹（{folder}）中，已略过。"
        "请把该文件放回该文件夹，才能生成相同的图片。",
    },
    "recipe_lora_changed": {
        "en": "LoRA {name!r} in the folder is not the file this image was made with (sha256 {sha256}…); "
        "the result may differ.",
        "zh": "文件夹中的 LoRA {name!r} 与生成这张图片时所用的文件不同（sha256 {sha256}…），结果可能不一样。",
    },
    "recipe_too_many_loras": {
        "en": "This image used {count} LoRAs but the form has {slots} slots; left out: {names}. "
        "The REST API accepts all of them.",
        "zh": "这张图片使用了 {count} 个 LoRA，但表单只有 {slots} 个位置；未填入：{names}。REST API 可以全部使用。",
    },
    "url_format_unsupported": {
        "en": "response_format \"url\" is not offered; use \"b64_json\".",
        "zh": "不支持 response_format \"url\"，请使用 \"b64_json\"。",
    },
    "cancelled": {
        "en": "Generation stopped.",
        "zh": "已停止生成。",
    },
    "out_of_memory": {
        "en": "Out of GPU memory for this job. Try a smaller size, a smaller batch, or guidance 0.",
        "zh": "显存不足，无法完成此任务。请尝试更小的尺寸、更小的批量或将引导系数设为 0。",
    },
    "does_not_fit": {
        "en": "This job does not fit in GPU memory ({detail}). Try a smaller size, a smaller batch, or guidance 0.",
        "zh": "此任务超出显存容量（{detail}）。请尝试更小的尺寸、更小的批量或将引导系数设为 0。",
    },
    "internal_error": {
        "en": "Generation failed because of an internal error ({detail}). The server keeps running; see its log.",
        "zh": "生成因内部错误失败（{detail}）。服务仍在运行，详情见服务日志。",
    },
    "engine_rejected": {
        "en": "The request was rejected: {detail}",
        "zh": "请求被拒绝：{detail}",
    },
    "status_queued": {
        "en": "Waiting in queue: {ahead} job(s) ahead of yours.",
        "zh": "排队中：前面还有 {ahead} 个任务。",
    },
    "status_running": {
        "en": "Generating: step {step}/{total}.",
        "zh": "生成中：第 {step}/{total} 步。",
    },
    "history_deleted": {
        "en": "The image was deleted from the output folder.",
        "zh": "已从输出文件夹中删除该图片。",
    },
    "history_nothing_chosen": {
        "en": "Choose an image in the history first (click it).",
        "zh": "请先在历史中点击选中一张图片。",
    },
    "preview_caption": {
        "en": "preview · step {step}/{total}",
        "zh": "预览 · 第 {step}/{total} 步",
    },
    "status_done": {
        "en": "Done in {seconds:.1f} s. Seeds: {seeds}.",
        "zh": "完成，用时 {seconds:.1f} 秒。种子：{seeds}。",
    },
    "png_without_recipe": {
        "en": "This image carries no Z-Image recipe, so the form was left as it was.",
        "zh": "这张图片不含 Z-Image 生成参数，表单保持不变。",
    },
    "recipe_restored": {
        "en": "Form restored from the image's recipe (seed {seed}).",
        "zh": "已从图片中的生成参数恢复表单（种子 {seed}）。",
    },
    # ---- security (app.security, app.auth, app.uploads) ----
    "untrusted_file": {
        "en": "{field} must be a file uploaded to this server (the upload button, gradio_client's handle_file(), "
        "or POST /gradio_api/upload first); server paths, links and URLs are not accepted.",
        "zh": "{field} 必须是上传到本服务器的文件（使用上传按钮、gradio_client 的 handle_file()，或先调用 "
        "POST /gradio_api/upload）；不接受服务器路径、符号链接或 URL。",
    },
    "host_not_allowed": {
        "en": "Host {host!r} is not allowed. If this server is meant to answer to that name, add it to the "
        "allowed_hosts setting (ZIMAGE_ALLOWED_HOSTS).",
        "zh": "不允许的 Host {host!r}。如果本服务器确实应以该名称访问，请把它加入 allowed_hosts 设置"
        "（ZIMAGE_ALLOWED_HOSTS）。",
    },
    "origin_not_allowed": {
        "en": "Requests from the web page at {origin!r} may not change anything here. Use this server's own page, "
        "or list that origin in the cors_origins setting (ZIMAGE_CORS_ORIGINS).",
        "zh": "来自网页 {origin!r} 的请求不得修改本服务器的任何内容。请使用本服务器自己的页面，"
        "或把该来源加入 cors_origins 设置（ZIMAGE_CORS_ORIGINS）。",
    },
    "json_required": {
        "en": "POST bodies must be JSON: send the header Content-Type: application/json (got {content_type!r}).",
        "zh": "POST 请求体必须是 JSON：请发送请求头 Content-Type: application/json（当前为 {content_type!r}）。",
    },
    "api_key_required": {
        "en": "This server needs its API key: send the header Authorization: Bearer <key> "
        "(openai SDK: api_key=..., gradio_client: headers=...), or log in at /login in the browser.",
        "zh": "本服务器需要 API 密钥：请发送请求头 Authorization: Bearer <密钥>"
        "（openai SDK：api_key=...，gradio_client：headers=...），或在浏览器中通过 /login 登录。",
    },
    "login_failed": {
        "en": "Wrong API key.",
        "zh": "API 密钥错误。",
    },
}


def language_from_header(accept_language: str | None) -> str:
    """Pick "zh" or "en" from an Accept-Language header, honouring q-values; English by default."""
    if not accept_language:
        return "en"
    best_lang, best_q = "en", -1.0
    for part in accept_language.split(","):
        pieces = part.strip().split(";")
        tag = pieces[0].strip().lower()
        q = 1.0
        for param in pieces[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        base = tag.split("-")[0]
        if base in LANGUAGES and q > best_q:
            best_lang, best_q = base, q
    return best_lang


def normalize_language(lang: str | None) -> str:
    """Map a UI locale ("zh-CN", "zh-TW", "en-US", ...) to one of LANGUAGES."""
    base = (lang or "en").split("-")[0].lower()
    return base if base in LANGUAGES else "en"


def translate(key: str, lang: str = "en", **params: object) -> str:
    """The message `key` in `lang` with `params` filled in."""
    texts = MESSAGES[key]
    return texts.get(normalize_language(lang), texts["en"]).format(**params)
