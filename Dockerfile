# matrix-email-bridge container image.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY --from=build /app/dist ./dist
COPY bin ./bin
# Config, registration, DKIM key and (for the embedded store) the SQLite file live in /data.
VOLUME /data
# 25: inbound SMTP (smtp.port); 8090: appservice listener (appservice.port).
EXPOSE 25 8090
# --max-semi-space-size=4, --expose-gc, MALLOC_MMAP_THRESHOLD_ and MALLOC_ARENA_MAX: see docs/operations.md, "Memory".
ENV MALLOC_MMAP_THRESHOLD_=65536 MALLOC_ARENA_MAX=1
ENTRYPOINT ["node", "--max-semi-space-size=4", "--expose-gc", "/app/bin/matrix-email-bridge.js"]
CMD ["start", "-c", "/data/config.yaml"]
