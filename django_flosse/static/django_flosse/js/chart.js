/*
 * django-flosse dashboard chart: active connections over the last window, drawn on a
 * <canvas> (no library, no CDN: the admin works offline). dashboard.js calls
 * djangoFlosseChart.draw() with its points; the colours follow the admin's CSS variables.
 */
(function () {
    "use strict";

    // The y axis counts connections: whole numbers only. The tick step is the smallest
    // 1, 2 or 5 times a power of ten that covers the top in at most four steps.
    function yTicks(top) {
        const quarter = Math.max(1, top) / 4;
        const magnitude = Math.pow(10, Math.max(0, Math.floor(Math.log10(quarter))));
        let step = 10 * magnitude;
        for (const factor of [1, 2, 5]) {
            if (factor * magnitude >= quarter) {
                step = factor * magnitude;
                break;
            }
        }
        return {step, max: Math.max(1, Math.ceil(top / step)) * step};
    }

    // Active connections is a step function: each value holds until the next point.
    function draw(canvas, styleRoot, points, total, windowMs, end, number) {
        const rect = canvas.getBoundingClientRect();
        if (!rect.width || !rect.height) {
            return;
        }
        const ratio = window.devicePixelRatio || 1;
        canvas.width = Math.round(rect.width * ratio);
        canvas.height = Math.round(rect.height * ratio);
        const ctx = canvas.getContext("2d");
        ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
        const style = getComputedStyle(styleRoot);
        const line = style.getPropertyValue("--link-fg").trim() || "#417893";
        const grid = style.getPropertyValue("--hairline-color").trim() || "#e8e8e8";
        const text = style.getPropertyValue("--body-quiet-color").trim() || "#666";
        const font = style.getPropertyValue("--font-family-primary").trim() || "sans-serif";

        const left = 44;
        const bottom = 20;
        const width = rect.width - left - 8;
        const height = rect.height - bottom - 8;
        const start = end - windowMs;
        const visible = points.filter((p) => p[0] >= start);
        const ticks = yTicks(Math.max(1, total, ...visible.map((p) => p[1])));
        const max = ticks.max;
        const x = (ms) => left + ((Math.max(ms, start) - start) / windowMs) * width;
        const y = (value) => 8 + height - (value / max) * height;

        ctx.clearRect(0, 0, rect.width, rect.height);
        ctx.font = "11px " + font;
        ctx.lineWidth = 1;
        ctx.strokeStyle = grid;
        ctx.fillStyle = text;
        ctx.textAlign = "right";
        ctx.textBaseline = "middle";
        for (let value = 0; value <= max; value += ticks.step) {
            const yy = Math.round(y(value)) + 0.5;
            ctx.beginPath();
            ctx.moveTo(left, yy);
            ctx.lineTo(left + width, yy);
            ctx.stroke();
            ctx.fillText(number(value), left - 6, yy);
        }
        ctx.textAlign = "center";
        ctx.textBaseline = "top";
        const stepMs = windowMs / 5;
        for (let i = 0; i <= 5; i++) {
            const ms = start + stepMs * i;
            const label = new Date(ms).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
            ctx.fillText(label, Math.min(Math.max(x(ms), left + 14), left + width - 14), 8 + height + 5);
        }

        if (!points.length) {
            return;
        }
        // Active connections is a step function: hold each value until the next point.
        ctx.beginPath();
        let previous = null;
        for (const [ms, value] of points) {
            if (previous === null) {
                ctx.moveTo(x(ms), y(value));
            } else {
                ctx.lineTo(x(ms), y(previous));
                ctx.lineTo(x(ms), y(value));
            }
            previous = value;
        }
        ctx.lineTo(x(end), y(previous));
        ctx.strokeStyle = line;
        ctx.lineWidth = 2;
        ctx.stroke();
        ctx.lineTo(x(end), y(0));
        ctx.lineTo(x(points[0][0]), y(0));
        ctx.closePath();
        ctx.globalAlpha = 0.15;
        ctx.fillStyle = line;
        ctx.fill();
        ctx.globalAlpha = 1;
    }

    window.djangoFlosseChart = {draw, yTicks};
})();
